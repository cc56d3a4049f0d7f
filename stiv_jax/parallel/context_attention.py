"""Context (sequence) parallel self-attention: tokens sharded over the ``context`` mesh axis, three exact methods.

- ``ulysses``: an all-to-all over ``context`` trades each device's ``length / C`` tokens of every head for all
  tokens of ``heads / C`` heads; attention runs locally with the model's kernel; a second all-to-all restores
  the token sharding. ``2 x 4 x`` the local q/k/v/out bytes per call; needs the heads per device divisible by C.
- ``ring``: the key/value chunks travel around the ``context`` ring (``stiv_jax.parallel.ring_attention``):
  ``C - 1`` hops of the local k/v bytes forward, ``C`` hops of k, v, dk, dv backward; any head count; causal
  masks kept (zig-zag chunk order balances them).
- ``hybrid`` (USP): Ulysses inside groups of ``ulysses_size`` consecutive context devices (grouped
  all-to-alls), ring across the ``C / ulysses_size`` groups; needs the heads per device divisible by the group.

Use it for spatial and full-3D self-attention when video tokens are sharded (``activation_length -> context``)
and for temporal self-attention when frames are (``activation_frames -> context``): pass the logical name of the
sequence dimension as ``length_name``. Without a mesh, or when that name maps to no mesh axis of size > 1, it
is the local attention over the whole sequence. The model picks the method with
``config.model.context_attention`` (the default ``'gspmd'`` leaves the sharded sequence to XLA's partitioner,
which gathers keys and values over ``context`` instead).
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec

from stiv_jax.parallel import ring_attention


def _attention(query, key, value, mask, scale, causal=False):
    """Plain attention on one device's data: ``mask`` ``[batch, kv_length]`` or None."""
    if mask is not None:
        mask = mask[:, None, None, :]  # [batch, 1, 1, kv_length]
    return jax.nn.dot_product_attention(query, key, value, mask=mask, scale=scale, is_causal=causal)


LocalAttention = Callable[[jax.Array, jax.Array, jax.Array, "jax.Array | None"], jax.Array]


def _mesh_axes(name: str | None) -> tuple[str, ...]:
    if name is None:
        return ()
    axes = nn.logical_to_mesh_axes((name,))[0]
    if axes is None:
        return ()
    return tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)


def sequence_shards(length_name: str | None) -> int:
    """How many devices the active mesh splits a sequence named ``length_name`` over (1: not split, or no mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return 1
    return math.prod(mesh.shape[a] for a in _mesh_axes(length_name))


METHODS = ("ulysses", "ring", "hybrid")


def ulysses_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, mask: jax.Array | None = None,
                      scale: float | None = None, batch_names: Sequence[str] = ("activation_batch",),
                      length_name: str = "activation_length",
                      heads_name: str | None = "activation_heads",
                      local_attention: LocalAttention | None = None) -> jax.Array:
    """Ulysses (all-to-all over heads) context-parallel attention; see ``context_parallel_attention``."""
    return context_parallel_attention(query, key, value, method="ulysses", mask=mask, scale=scale,
                                      batch_names=batch_names, length_name=length_name, heads_name=heads_name,
                                      local_attention=local_attention)


def context_parallel_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, method: str,
                               mask: jax.Array | None = None, causal: bool = False, scale: float | None = None,
                               ulysses_size: int = 1, zigzag: bool = True,
                               batch_names: Sequence[str] = ("activation_batch",),
                               length_name: str = "activation_length",
                               heads_name: str | None = "activation_heads",
                               local_attention: LocalAttention | None = None) -> jax.Array:
    """Exact multi-head self-attention with the sequence sharded over the mesh axes ``length_name`` maps to.

    Args:
      query, key, value: ``[batch, length, heads, head_dim]``; ``batch`` sharded as ``batch_names`` (logical names
        whose mesh axes are combined), ``length`` as ``length_name`` and ``heads`` as ``heads_name``.
      method: ``ulysses`` | ``ring`` | ``hybrid`` (module docstring).
      mask: optional ``[batch, length]`` bool key mask (True = attend).
      causal: query ``i`` sees keys ``<= i`` (global positions). Ulysses passes it to ``local_attention``.
      scale: score scale (``1 / sqrt(head_dim)`` if None).
      ulysses_size: ``hybrid`` only: devices per Ulysses group (divides the context size).
      zigzag: causal ring / hybrid: zig-zag chunk order (balanced causal work) where the local length is even.
      local_attention: ``(q, k, v, mask) -> out`` run by Ulysses on each device's ``[batch, length, heads / C,
        head_dim]`` (the model passes its configured kernel); plain ``jax.nn`` attention if None. The ring's
        blocks are its own einsums (it needs their logsumexp).

    Returns:
      ``[batch, length, heads, head_dim]``, sharded like ``query``.

    Raises:
      ValueError: naming the config key to change when the heads per device do not split over the Ulysses
        group, the length over the context size, or the method is unknown.
    """
    if method not in METHODS:
        raise ValueError(f"config.model.context_attention={method!r}: valid context-parallel methods {METHODS}")
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    if local_attention is None:
        local_attention = lambda q, k, v, m: _attention(q, k, v, m, scale, causal)  # noqa: E731
    mesh = jax.sharding.get_abstract_mesh()
    seq_axes = _mesh_axes(length_name)
    if mesh is None or mesh.empty or not seq_axes or math.prod(mesh.shape[a] for a in seq_axes) == 1:
        return local_attention(query, key, value, mask)
    seq_size = math.prod(mesh.shape[a] for a in seq_axes)
    group = {"ulysses": seq_size, "ring": 1, "hybrid": ulysses_size}[method]
    _check_split(query, mesh, seq_axes, heads_name, seq_size, group, method)
    batch_axes = tuple(a for n in batch_names for a in _mesh_axes(n))
    head_axes = tuple(a for a in _mesh_axes(heads_name) if a not in seq_axes)
    as_entry = lambda axes: (axes[0] if len(axes) == 1 else axes) if axes else None  # noqa: E731
    qkv_spec = PartitionSpec(as_entry(batch_axes), as_entry(seq_axes), as_entry(head_axes), None)
    mask_spec = PartitionSpec(as_entry(batch_axes), as_entry(seq_axes))
    axis_name = seq_axes[0] if len(seq_axes) == 1 else seq_axes
    local = functools.partial(_local, axis_name=axis_name, seq_size=seq_size, group=group, causal=causal,
                              zigzag=zigzag, scale=scale, local_attention=local_attention)
    if mask is None:
        fn = jax.shard_map(lambda q, k, v: local(q, k, v, None), mesh=mesh,
                           in_specs=(qkv_spec,) * 3, out_specs=qkv_spec, check_vma=False)
        return fn(query, key, value)
    fn = jax.shard_map(local, mesh=mesh, in_specs=(qkv_spec,) * 3 + (mask_spec,), out_specs=qkv_spec,
                       check_vma=False)
    return fn(query, key, value, mask)


def _check_split(query, mesh, seq_axes, heads_name, seq_size: int, group: int, method: str) -> None:
    head_axes = tuple(a for a in _mesh_axes(heads_name) if a not in seq_axes)
    heads_per_device = query.shape[2] // math.prod(mesh.shape[a] for a in head_axes)
    if method == "hybrid" and (group < 1 or seq_size % group):
        raise ValueError(f"hybrid attention: config.model.context_ulysses_size={group} must divide the context "
                         f"size {seq_size} (mesh axes {seq_axes})")
    if heads_per_device % group:
        where = ("the context size" if method == "ulysses" else "config.model.context_ulysses_size")
        raise ValueError(
            f"{method} attention needs the {heads_per_device} heads per device divisible by {where} {group} "
            f"(mesh axes {seq_axes}); change config.model.num_heads or config.mesh.ici.context, or use "
            f"config.model.context_attention='ring' (any head count)")
    if query.shape[1] % seq_size:
        raise ValueError(f"sequence length {query.shape[1]} is not divisible by the context size {seq_size}")


def _local(q, k, v, m, *, axis_name, seq_size: int, group: int, causal: bool, zigzag: bool, scale: float,
           local_attention: LocalAttention):
    """Per-device body: Ulysses all-to-all within groups of ``group`` devices, ring across the groups."""
    groups = None if group == seq_size else [[g * group + u for u in range(group)] for g in range(seq_size // group)]
    if group > 1:
        # [b, L/C, h, d] -> [b, L*group/C, h/group, d]: gather the group's sequence, scatter the heads.
        to_heads = lambda x: jax.lax.all_to_all(x, axis_name, split_axis=2, concat_axis=1, tiled=True,  # noqa
                                                axis_index_groups=groups)
        q, k, v = to_heads(q), to_heads(k), to_heads(v)
        if m is not None:
            m = jax.lax.all_gather(m, axis_name, axis=1, tiled=True, axis_index_groups=groups)
    if group == seq_size:
        out = local_attention(q, k, v, m)
    else:
        ring = ring_attention.Ring(axis_name, seq_size // group, group, seq_size)
        zig = zigzag and causal and q.shape[1] % 2 == 0
        if zig:
            q, k, v = (ring_attention.zigzag_order(x, ring) for x in (q, k, v))
            m = None if m is None else ring_attention.zigzag_order(m, ring)
        out = ring_attention.ring_attention_local(q, k, v, m, ring=ring, causal=causal, zigzag=zig, scale=scale)
        if zig:
            out = ring_attention.natural_order(out, ring)
    if group > 1:
        out = jax.lax.all_to_all(out, axis_name, split_axis=1, concat_axis=2, tiled=True, axis_index_groups=groups)
    return out
