"""Context (sequence) parallel attention, Ulysses style: tokens sharded over the ``context`` mesh axis.

Each device holds ``length / C`` tokens of every head. An all-to-all over ``context`` trades that for all tokens
of ``heads / C`` heads, attention runs locally (bidirectional, exact), and a second all-to-all restores the token
sharding. Communication per call is ``2 x 4 x`` the local q/k/v/out bytes, independent of the sequence length
per device, and no device ever holds the full ``[length, length]`` scores of all heads.

Use it for spatial self-attention when video tokens are sharded (``activation_length -> context``) and for
temporal self-attention when frames are (``activation_frames -> context``): pass the logical name of the
sequence dimension as ``length_name``. Without a mesh, or when that name maps to no mesh axis of size > 1, it
is the local attention over the whole sequence. The model uses it for its self-attention layers when
``config.model.context_attention = 'ulysses'`` (with the ``fsdp_context`` preset); the default ``'gspmd'`` leaves
the sharded sequence to XLA's partitioner, which gathers keys and values over ``context`` instead.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec


def _attention(query, key, value, mask, scale):
    """Plain attention on one device's data: ``mask`` ``[batch, kv_length]`` or None."""
    if mask is not None:
        mask = mask[:, None, None, :]  # [batch, 1, 1, kv_length]
    return jax.nn.dot_product_attention(query, key, value, mask=mask, scale=scale)


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


def ulysses_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, mask: jax.Array | None = None,
                      scale: float | None = None, batch_names: Sequence[str] = ("activation_batch",),
                      length_name: str = "activation_length",
                      heads_name: str | None = "activation_heads",
                      local_attention: LocalAttention | None = None) -> jax.Array:
    """Exact multi-head self-attention with the sequence sharded over the mesh axes ``length_name`` maps to.

    Args:
      query, key, value: ``[batch, length, heads, head_dim]``; ``batch`` sharded as ``batch_names`` (logical names
        whose mesh axes are combined), ``length`` as ``length_name`` and ``heads`` as ``heads_name``.
      mask: optional ``[batch, length]`` bool key mask (True = attend).
      scale: score scale (``1 / sqrt(head_dim)`` if None); used by the default local attention only.
      local_attention: ``(q, k, v, mask) -> out`` run on each device's ``[batch, length, heads / C, head_dim]``
        (the model passes its configured kernel: XLA, cuDNN or splash); plain ``jax.nn`` attention if None.

    Returns:
      ``[batch, length, heads, head_dim]``, sharded like ``query``.

    Raises:
      ValueError: when the heads left on a device are not divisible by the context-axis size (change
        ``config.model.num_heads`` or ``config.mesh.ici.context``).
    """
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    if local_attention is None:
        local_attention = lambda q, k, v, m: _attention(q, k, v, m, scale)  # noqa: E731
    mesh = jax.sharding.get_abstract_mesh()
    seq_axes = _mesh_axes(length_name)
    if mesh is None or mesh.empty or not seq_axes:
        return local_attention(query, key, value, mask)
    seq_size = math.prod(mesh.shape[a] for a in seq_axes)
    if seq_size == 1:
        return local_attention(query, key, value, mask)
    batch_axes = tuple(a for n in batch_names for a in _mesh_axes(n))
    head_axes = tuple(a for a in _mesh_axes(heads_name) if a not in seq_axes)
    heads_per_device = query.shape[2] // math.prod(mesh.shape[a] for a in head_axes)
    if heads_per_device % seq_size:
        raise ValueError(
            f"Ulysses attention needs the {heads_per_device} heads per device divisible by the context size "
            f"{seq_size} (mesh axes {seq_axes}); change config.model.num_heads or config.mesh.ici.context")
    if query.shape[1] % seq_size:
        raise ValueError(f"sequence length {query.shape[1]} is not divisible by the context size {seq_size}")
    as_entry = lambda axes: (axes[0] if len(axes) == 1 else axes) if axes else None  # noqa: E731
    qkv_spec = PartitionSpec(as_entry(batch_axes), as_entry(seq_axes), as_entry(head_axes), None)
    mask_spec = PartitionSpec(as_entry(batch_axes), as_entry(seq_axes))
    axis_name = seq_axes[0] if len(seq_axes) == 1 else seq_axes

    def local(q, k, v, m):
        # [b, L/C, h, d] -> [b, L, h/C, d]: gather the sequence, scatter the heads.
        to_heads = lambda x: jax.lax.all_to_all(x, axis_name, split_axis=2, concat_axis=1, tiled=True)  # noqa
        q, k, v = to_heads(q), to_heads(k), to_heads(v)
        if m is not None:
            m = jax.lax.all_gather(m, axis_name, axis=1, tiled=True)
        out = local_attention(q, k, v, m)
        return jax.lax.all_to_all(out, axis_name, split_axis=1, concat_axis=2, tiled=True)

    if mask is None:
        fn = jax.shard_map(lambda q, k, v: local(q, k, v, None), mesh=mesh,
                           in_specs=(qkv_spec,) * 3, out_specs=qkv_spec, check_vma=False)
        return fn(query, key, value)
    fn = jax.shard_map(local, mesh=mesh, in_specs=(qkv_spec,) * 3 + (mask_spec,), out_specs=qkv_spec,
                       check_vma=False)
    return fn(query, key, value, mask)
