"""Scaled dot-product attention implementations, selected by ``config.model.attention_impl``.

- ``xla``: plain einsums, logits and softmax in float32 (runs everywhere; the reference).
- ``dot_product``: ``jax.nn.dot_product_attention``, cuDNN flash attention on GPU for 16-bit inputs, XLA
  otherwise.
- ``splash``: the Pallas TPU splash-attention kernel; block sizes from the config (upper bounds: the largest
  multiple of 128 dividing the length is used); a clear error off TPU (``splash_interpret=True`` runs it in Pallas
  interpret mode for CPU tests). Sequences whose length is not a multiple of 128 (temporal attention over a few
  frames, a 77-token text) take the XLA path.

Orthogonal to the kernel, ``config.model.context_attention`` runs self-attention context parallel where its
sequence is sharded (``stiv_jax.parallel.context_attention``): ``ulysses`` (an all-to-all over the ``context``
mesh axis gives every device the whole sequence for a subset of heads, and the chosen kernel runs there),
``ring`` (key/value blocks travel around the context ring; its blockwise online softmax is XLA einsums with
float32 statistics whatever the kernel) or ``hybrid`` (Ulysses with the kernel inside groups of
``context_ulysses_size`` devices, ring across groups; the ring part's blocks are einsums too).

All take ``q`` ``[batch, q_len, heads, head_dim]``, ``k``/``v`` ``[batch, kv_len, heads, head_dim]`` and an
optional key padding mask ``kv_mask`` ``[batch, kv_len]`` (True = real token). Query rows without any valid key
(the empty prompt) return zeros in every implementation.
"""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from stiv_jax.model.config import DiTConfig
from stiv_jax.parallel import context_attention


def xla_attention(q, k, v, *, kv_mask=None, causal: bool = False):
    """Reference attention: ``[batch, q_len, heads, head_dim]`` out, float32 logits and softmax."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    valid = jnp.ones(logits.shape[-2:], bool)[None, None]
    if causal:
        valid = valid & jnp.tril(valid[0, 0])[None, None]
    if kv_mask is not None:
        valid = valid & kv_mask[:, None, None, :]
    logits = jnp.where(valid, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def jax_nn_attention(q, k, v, *, kv_mask=None, causal: bool = False):
    """``jax.nn.dot_product_attention``: cuDNN on GPU when the inputs are 16-bit, else XLA."""
    use_cudnn = jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
    mask = None if kv_mask is None else kv_mask[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, scale=1.0 / math.sqrt(q.shape[-1]),
                                        implementation="cudnn" if use_cudnn else "xla")


SPLASH_MIN_BLOCK = 128  # TPU lanes: splash blocks (and so sequence lengths) are multiples of 128


def _block_size(block: int, length: int) -> int:
    """The largest multiple of 128 that is <= ``block`` and divides ``length`` (config blocks are upper bounds)."""
    for size in range(min(block, length) // SPLASH_MIN_BLOCK * SPLASH_MIN_BLOCK, 0, -SPLASH_MIN_BLOCK):
        if length % size == 0:
            return size
    raise ValueError(f"splash attention: no block size that is a multiple of {SPLASH_MIN_BLOCK}, at most {block} "
                     f"and divides the sequence length {length}; raise config.model.splash_block_*")


def _splash_kernel(config: DiTConfig, q_len: int, kv_len: int, num_heads: int, causal: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
    blocks = {"splash_block_q": _block_size(config.splash_block_q, q_len),
              "splash_block_kv": _block_size(config.splash_block_kv, kv_len)}
    blocks["splash_block_kv_compute"] = _block_size(config.splash_block_kv_compute, blocks["splash_block_kv"])
    sizes = splash.BlockSizes(block_q=blocks["splash_block_q"], block_kv=blocks["splash_block_kv"],
                              block_kv_compute=blocks["splash_block_kv_compute"],
                              block_q_dkv=blocks["splash_block_q"], block_kv_dkv=blocks["splash_block_kv"],
                              block_kv_dkv_compute=blocks["splash_block_kv_compute"],
                              block_q_dq=blocks["splash_block_q"], block_kv_dq=blocks["splash_block_kv"])
    base = (splash_mask.CausalMask((q_len, kv_len)) if causal else splash_mask.FullMask((q_len, kv_len)))
    return splash, splash.make_splash_mha(splash_mask.MultiHeadMask([base] * num_heads), block_sizes=sizes,
                                          head_shards=1, q_seq_shards=1, interpret=config.splash_interpret)


def _target_platform() -> str:
    """Platform of the active mesh's devices (TPU for an AOT compile on a CPU host), else the default backend."""
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    return getattr(device, "platform", None) or jax.default_backend()


def _splash_local(q, k, v, kv_mask, *, causal: bool, config: DiTConfig):
    """Splash attention on one device's ``[batch, len, heads, head_dim]`` (no sharding; XLA for short sequences)."""
    batch, q_len, num_heads, head_dim = q.shape
    kv_len = k.shape[1]
    if q_len % SPLASH_MIN_BLOCK or kv_len % SPLASH_MIN_BLOCK:
        # Short or odd sequences (temporal attention over ~10 frames, ~77 text tokens) are cheap: use XLA.
        return xla_attention(q, k, v, kv_mask=kv_mask, causal=causal)
    splash, kernel = _splash_kernel(config, q_len, kv_len, num_heads, causal)
    if kv_mask is None:
        kv_mask = jnp.ones((batch, kv_len), bool)
    # Padding as segments: every query is segment 1, real keys 1, padded keys 0.
    q_segments = jnp.ones(q.shape[:2], jnp.int32)
    q = jnp.swapaxes(q, 1, 2) / math.sqrt(head_dim)   # splash wants [heads, len, dim] and no scale
    k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    out = jax.vmap(lambda qq, kk, vv, sq, skv: kernel(qq, kk, vv, segment_ids=splash.SegmentIds(sq, skv)))(
        q, k, v, q_segments, kv_mask.astype(jnp.int32))
    return jnp.swapaxes(out, 1, 2)


def _check_splash_platform(config: DiTConfig):
    platform = _target_platform()
    if platform != "tpu" and not config.splash_interpret:
        raise ValueError(f"config.model.attention_impl='splash' needs a TPU, but the target platform is "
                         f"{platform!r}; use attention_impl='xla' or 'dot_product' here")


def splash_attention(q, k, v, *, kv_mask=None, causal: bool = False, config: DiTConfig,
                     batch_name: str = "activation_batch"):
    """Pallas TPU splash attention, vmapped over the batch and ``shard_map``-ped over the active mesh.

    The batch dimension is sharded as the logical ``batch_name`` maps to, heads as ``activation_heads``; the
    sequences are whole on every device (a sharded sequence is gathered: use Ulysses to keep it sharded).
    """
    _check_splash_platform(config)
    if kv_mask is None:
        kv_mask = jnp.ones((k.shape[0], k.shape[1]), bool)
    run = functools.partial(_splash_local, causal=causal, config=config)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return run(q, k, v, kv_mask)
    rules = nn.get_logical_axis_rules()
    batch_axes = nn.logical_to_mesh_axes((batch_name,), rules)[0]
    head_axes = nn.logical_to_mesh_axes(("activation_heads",), rules)[0]
    tokens = PartitionSpec(batch_axes, None, head_axes, None)
    return jax.shard_map(run, mesh=mesh, in_specs=(tokens, tokens, tokens, PartitionSpec(batch_axes, None)),
                         out_specs=tokens, check_vma=False)(q, k, v, kv_mask)


def _context_parallel(q, k, v, *, kv_mask, causal: bool, config: DiTConfig, length_name: str, batch_name: str):
    """Context-parallel self-attention (``config.context_attention``); Ulysses runs ``config.attention_impl``."""
    if config.attention_impl == "splash":
        _check_splash_platform(config)
        local = functools.partial(_splash_local, causal=causal, config=config)
    else:
        kernel = jax_nn_attention if config.attention_impl == "dot_product" else xla_attention
        local = lambda q, k, v, m: kernel(q, k, v, kv_mask=m, causal=causal)  # noqa: E731
    return context_attention.context_parallel_attention(
        q, k, v, method=config.context_attention, mask=kv_mask, causal=causal,
        ulysses_size=config.context_ulysses_size, zigzag=config.ring_zigzag, length_name=length_name,
        batch_names=(batch_name,), local_attention=local)


def attention(q, k, v, *, kv_mask=None, causal: bool = False, config: DiTConfig, length_name: str | None = None,
              batch_name: str = "activation_batch"):
    """Dispatches to ``config.attention_impl``; ``[batch, q_len, heads, head_dim]`` out, zero for empty rows.

    ``length_name`` is the logical name of a self-attention's sequence dimension (``activation_length`` or
    ``activation_frames``); with it, a mesh that splits it and ``config.context_attention`` other than
    ``gspmd`` the attention is context parallel.
    ``batch_name`` is the logical name of the batch dimension (``activation_batch_length`` when spatial tokens are
    folded into it, as in temporal attention).
    """
    # Context parallel only where the sequence is split; otherwise the kernel's own path (splash keeps its
    # shard_map).
    if config.context_attention != "gspmd" and context_attention.sequence_shards(length_name) > 1:
        out = _context_parallel(q, k, v, kv_mask=kv_mask, causal=causal, config=config, length_name=length_name,
                       batch_name=batch_name)
    else:
        impls = {"xla": xla_attention, "dot_product": jax_nn_attention,
                 "splash": functools.partial(splash_attention, config=config, batch_name=batch_name)}
        out = impls[config.attention_impl](q, k, v, kv_mask=kv_mask, causal=causal)
    if kv_mask is not None:
        out = jnp.where(kv_mask.any(-1)[:, None, None, None], out, jnp.zeros_like(out))
    return out
