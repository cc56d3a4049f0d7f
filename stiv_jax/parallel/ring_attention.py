"""Ring attention: exact blockwise self-attention with the sequence sharded over a ring of devices.

Run inside ``shard_map`` (``stiv_jax.parallel.context_attention`` does that). Each of the ``R`` ring members holds
one chunk of the queries, keys and values. The key/value chunks travel around the ring (``jax.lax.ppermute``,
member ``r`` sends to ``r + 1``); every member folds each visiting chunk into an online softmax (running max
``m``, normaliser ``l`` and unnormalised output, float32), so no device ever holds more than
``[local_len, local_len]`` scores per head. Communication per call is ``R - 1`` hops of the local k/v bytes
forward, and in the backward ``R`` hops of k, v and their travelling gradients ``dk``, ``dv``.

Backward (``jax.custom_vjp``): the forward saves its output and the per-row logsumexp; the backward makes a second
ring pass in which k, v, dk and dv travel *together*, so the gradient accumulated for a chunk is always the
gradient of the chunk that produced it (a stale-chunk bug in one public ring backward mixed them up), and after
``R`` hops each chunk's dk/dv arrive back at its owner. Probabilities are recomputed from the saved logsumexp.

Causal masks use global positions. With ``zigzag`` each member holds two half-chunks, ``r`` and ``2R - 1 - r``
(Striped/zig-zag ring attention), so that every visiting chunk costs every member half a block: the causal
work is balanced (contiguous chunks leave member ``R - 1`` with ``R`` blocks and member 0 with one).
``zigzag_order`` / ``natural_order`` move a contiguous layout to the zig-zag one and back (two half-chunk
``ppermute``s each).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp

_MIN = float(jnp.finfo(jnp.float32).min)


@dataclasses.dataclass(frozen=True)
class Ring:
    """Where a device sits on the ring, static except for the traced ``position()``.

    ``axis_name``: the mesh axis (or axes) of the ``shard_map``; ``size``: ring members ``R``; ``stride``: linear
    axis-index distance between neighbours (1 for a plain ring; the Ulysses group size in the hybrid, whose ring
    joins the devices of equal rank in consecutive groups); ``axis_size``: devices on ``axis_name``.
    """

    axis_name: str | tuple[str, ...]
    size: int
    stride: int
    axis_size: int

    def position(self):
        """This device's ring position ``r`` in ``[0, R)`` (traced)."""
        return jax.lax.axis_index(self.axis_name) // self.stride

    def perm(self, shift: int) -> list[tuple[int, int]]:
        """``ppermute`` pairs sending ring position ``r`` to ``r + shift`` (same rank within a group)."""
        return self.pairs(lambda r: (r + shift) % self.size)

    def pairs(self, dest) -> list[tuple[int, int]]:
        pairs = []
        for i in range(self.axis_size):
            r, rank = divmod(i, self.stride)
            pairs.append((i, dest(r) * self.stride + rank))
        return pairs


def _positions(ring: Ring, r, length: int, zigzag: bool):
    """Global sequence positions ``[length]`` of the local chunk of ring position ``r`` (traced)."""
    if not zigzag:
        return r * length + jnp.arange(length)
    half = length // 2
    return jnp.concatenate([r * half + jnp.arange(half), (2 * ring.size - 1 - r) * half + jnp.arange(half)])


# --- reordering between contiguous and zig-zag chunks (sub-chunk k of 2R: k < R at (k, 0), else (2R-1-k, 1)) ---

def _zigzag_place(size: int, k: int) -> tuple[int, int]:
    return (k, 0) if k < size else (2 * size - 1 - k, 1)


def _zigzag_messages(ring: Ring):
    """The two ``ppermute``s of ``zigzag_order``: message ``h`` carries half ``h`` of every ring position.

    Returns ``[(pairs, lands_in)]`` per message: the ``ppermute`` pairs and, per receiving ring position, which
    of its halves the message fills.
    """
    messages = []
    for h in (0, 1):
        places = {r: _zigzag_place(ring.size, 2 * r + h) for r in range(ring.size)}
        lands_in = [0] * ring.size
        for dest, dest_half in places.values():
            lands_in[dest] = dest_half
        messages.append((ring.pairs(lambda r, places=places: places[r][0]), lands_in))
    return messages


def _pick(a, b, first_is_a):
    """``(a, b)`` or ``(b, a)`` by a traced bool."""
    return jnp.where(first_is_a, a, b), jnp.where(first_is_a, b, a)


def zigzag_order(x, ring: Ring, axis: int = 1):
    """Contiguous local chunk (ring position ``r`` holds sub-chunks ``2r, 2r + 1``) -> zig-zag (``r, 2R-1-r``)."""
    halves = jnp.split(x, 2, axis=axis)
    (pairs0, lands0), (pairs1, _) = _zigzag_messages(ring)
    got0 = jax.lax.ppermute(halves[0], ring.axis_name, pairs0)
    got1 = jax.lax.ppermute(halves[1], ring.axis_name, pairs1)
    # Each receiver gets one message of each kind, one for each of its halves.
    return jnp.concatenate(_pick(got0, got1, jnp.asarray(lands0)[ring.position()] == 0), axis=axis)


def natural_order(x, ring: Ring, axis: int = 1):
    """Inverse of ``zigzag_order``: each message goes back along its reversed pairs, into the half it came from."""
    halves = jnp.split(x, 2, axis=axis)
    (pairs0, lands0), (pairs1, _) = _zigzag_messages(ring)
    send0, send1 = _pick(halves[0], halves[1], jnp.asarray(lands0)[ring.position()] == 0)
    back0 = jax.lax.ppermute(send0, ring.axis_name, [(d, s) for s, d in pairs0])
    back1 = jax.lax.ppermute(send1, ring.axis_name, [(d, s) for s, d in pairs1])
    return jnp.concatenate([back0, back1], axis=axis)


# --- the blocks a visiting chunk contributes: (query rows, key rows) per branch, chosen per device ---

FULL, KV_FIRST_HALF, Q_SECOND_HALF, SKIP = range(4)


def _branch(ring: Ring, r, source, *, causal: bool, zigzag: bool):
    """Which rows of the local queries meet which rows of the visiting chunk from ``source`` (traced index)."""
    if not causal:
        return jnp.int32(FULL)
    if zigzag:   # earlier chunk: all queries x its first half; later: the second query half x all of it
        return jnp.where(source == r, FULL, jnp.where(source < r, KV_FIRST_HALF, Q_SECOND_HALF)).astype(jnp.int32)
    return jnp.where(source > r, SKIP, FULL).astype(jnp.int32)


def _rows(branch: int, q_len: int, kv_len: int) -> tuple[slice, slice]:
    return {FULL: (slice(0, q_len), slice(0, kv_len)), KV_FIRST_HALF: (slice(0, q_len), slice(0, kv_len // 2)),
            Q_SECOND_HALF: (slice(q_len // 2, q_len), slice(0, kv_len))}[branch]


def _valid(q_pos, k_pos, kv_mask, causal: bool):
    """``[batch or 1, 1, q, k]`` bool: key ``k`` visible to query ``q`` (``kv_mask`` None: every key is real)."""
    valid = jnp.ones((1, 1, q_pos.shape[0], k_pos.shape[0]), bool) if kv_mask is None else kv_mask[:, None, None, :]
    if causal:
        valid = valid & (k_pos[None, :] <= q_pos[:, None])[None, None]
    return valid


def _scores(q, k, scale):
    return jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale


def _forward_block(state, q, k, v, kv_mask, q_pos, k_pos, *, causal, scale):
    """Folds one key/value block into the online-softmax ``state`` = (out ``[b, q, h, d]`` f32, m, l ``[b, h, q]``)."""
    out, m, l = state
    s = _scores(q, k, scale)
    valid = _valid(q_pos, k_pos, kv_mask, causal)
    m_new = jnp.maximum(m, jnp.max(jnp.where(valid, s, _MIN), axis=-1))
    p = jnp.where(valid, jnp.exp(s - m_new[..., None]), 0.0)
    correction = jnp.exp(m - m_new)
    l = l * correction + p.sum(-1)
    pv = jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    out = out * jnp.swapaxes(correction, 1, 2)[..., None] + pv
    return out, m_new, l


def _backward_block(grads, q, k, v, kv_mask, q_pos, k_pos, do, lse, delta, *, causal, scale):
    """Adds one block's contribution to ``grads`` = (dq ``[b, q, h, d]``, dk, dv ``[b, k, h, d]``), float32."""
    dq, dk, dv = grads
    s = _scores(q, k, scale)
    valid = _valid(q_pos, k_pos, kv_mask, causal)
    p = jnp.where(valid, jnp.exp(s - lse[..., None]), 0.0)
    dv = dv + jnp.einsum("bhqk,bqhd->bkhd", p.astype(do.dtype), do, preferred_element_type=jnp.float32)
    dp = jnp.einsum("bqhd,bkhd->bhqk", do, v, preferred_element_type=jnp.float32)
    ds = p * (dp - delta[..., None])
    dq = dq + jnp.einsum("bhqk,bkhd->bqhd", ds.astype(k.dtype), k, preferred_element_type=jnp.float32) * scale
    dk = dk + jnp.einsum("bhqk,bqhd->bkhd", ds.astype(q.dtype), q, preferred_element_type=jnp.float32) * scale
    return dq, dk, dv


def _on_rows(fn, branch: int, q_len: int, kv_len: int, args, carry_rows):
    """``carry -> carry`` running ``fn(sub_carry, *sub_args)`` on the query / key rows of ``branch`` only.

    ``args``: ``(array, axis, kind)`` with ``kind`` 'q' (sliced on query rows), 'kv' (key rows) or None (whole);
    ``carry_rows``: ``(axis, kind)`` per carry entry; results are written back into those rows of the carry.
    """
    rows = dict(zip(("q", "kv"), _rows(branch, q_len, kv_len)))
    cut = lambda x, axis, kind: x if kind is None or x is None else jax.lax.slice_in_dim(  # noqa: E731
        x, rows[kind].start, rows[kind].stop, axis=axis)

    def run(carry):
        sub = tuple(cut(c, axis, kind) for c, (axis, kind) in zip(carry, carry_rows))
        new = fn(sub, *(cut(a, axis, kind) for a, axis, kind in args))
        return tuple(jax.lax.dynamic_update_slice_in_dim(c, n.astype(c.dtype), rows[kind].start, axis)
                     for c, n, (axis, kind) in zip(carry, new, carry_rows))
    return run


def _switch(branch_index, make, carry):
    """``lax.switch`` over the four branches; ``make(branch)`` builds a branch's function of ``carry``."""
    return jax.lax.switch(branch_index, [make(FULL), make(KV_FIRST_HALF), make(Q_SECOND_HALF), lambda c: c], carry)


def _hop(ring: Ring, *xs):
    """Each array one step along the ring (``r -> r + 1``); None entries stay None."""
    return tuple(None if x is None else jax.lax.ppermute(x, ring.axis_name, ring.perm(1)) for x in xs)


def _ring_forward(q, k, v, kv_mask, *, ring: Ring, causal: bool, zigzag: bool, scale: float):
    b, q_len, h, _ = q.shape
    kv_len = k.shape[1]
    r = ring.position()
    q_pos = _positions(ring, r, q_len, zigzag)
    state = (jnp.zeros(q.shape, jnp.float32), jnp.full((b, h, q_len), _MIN, jnp.float32),
             jnp.zeros((b, h, q_len), jnp.float32))
    block = functools.partial(_forward_block, causal=causal, scale=scale)
    # carry layout: out [b, q, h, d] (axis 1, q rows), m and l [b, h, q] (axis 2, q rows)
    carry_rows = ((1, "q"), (2, "q"), (2, "q"))
    for step in range(ring.size):
        source = (r - step) % ring.size
        k_pos = _positions(ring, source, kv_len, zigzag)
        args = ((q, 1, "q"), (k, 1, "kv"), (v, 1, "kv"), (kv_mask, 1, "kv"), (q_pos, 0, "q"), (k_pos, 0, "kv"))
        make = lambda branch, args=args: _on_rows(block, branch, q_len, kv_len, args, carry_rows)  # noqa: E731
        state = _switch(_branch(ring, r, source, causal=causal, zigzag=zigzag), make, state)
        if step + 1 < ring.size:
            k, v, kv_mask = _hop(ring, k, v, kv_mask)
    out, m, l = state
    empty = l == 0.0            # rows with no visible key: zeros out, and a logsumexp that makes p = 0
    lse = jnp.where(empty, 0.0, m + jnp.log(jnp.where(empty, 1.0, l)))
    out = out / jnp.swapaxes(jnp.where(empty, 1.0, l), 1, 2)[..., None]
    return out.astype(q.dtype), lse


def _ring_backward(q, k, v, kv_mask, out, lse, do, *, ring: Ring, causal: bool, zigzag: bool, scale: float):
    q_len, kv_len = q.shape[1], k.shape[1]
    r = ring.position()
    q_pos = _positions(ring, r, q_len, zigzag)
    delta = jnp.swapaxes(jnp.sum(do.astype(jnp.float32) * out.astype(jnp.float32), -1), 1, 2)  # [b, h, q]
    dq = jnp.zeros(q.shape, jnp.float32)
    dk, dv = jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)
    block = functools.partial(_backward_block, causal=causal, scale=scale)
    carry_rows = ((1, "q"), (1, "kv"), (1, "kv"))
    for step in range(ring.size):
        source = (r - step) % ring.size
        k_pos = _positions(ring, source, kv_len, zigzag)
        args = ((q, 1, "q"), (k, 1, "kv"), (v, 1, "kv"), (kv_mask, 1, "kv"), (q_pos, 0, "q"), (k_pos, 0, "kv"),
                (do, 1, "q"), (lse, 2, "q"), (delta, 2, "q"))
        make = lambda branch, args=args: _on_rows(block, branch, q_len, kv_len, args, carry_rows)  # noqa: E731
        dq, dk, dv = _switch(_branch(ring, r, source, causal=causal, zigzag=zigzag), make, (dq, dk, dv))
        # k, v and the gradients accumulated for exactly this chunk move on together; after R hops dk/dv are home.
        dk, dv = _hop(ring, dk, dv)
        if step + 1 < ring.size:
            k, v, kv_mask = _hop(ring, k, v, kv_mask)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


def ring_attention_local(q, k, v, kv_mask, *, ring: Ring, causal: bool = False, zigzag: bool = False,
                         scale: float):
    """Exact attention of this device's query chunk to the whole ring's keys and values (call in ``shard_map``).

    Args:
      q: ``[batch, local_len, heads, head_dim]``; k, v: ``[batch, local_len, heads, head_dim]``.
      kv_mask: ``[batch, local_len]`` bool key mask (True = attend) or None.
      ring: the ring over the ``shard_map``'s context axis.
      causal: mask keys at later global positions than the query.
      zigzag: the local chunks are in zig-zag order (``zigzag_order``); needs an even ``local_len``.
      scale: score scale.

    Returns:
      ``[batch, local_len, heads, head_dim]``; rows without a visible key are zero.
    """
    if zigzag and q.shape[1] % 2:
        raise ValueError(f"zig-zag ring attention needs an even local sequence length, got {q.shape[1]}")
    return _ring_vjp(q, k, v, kv_mask, ring, causal, zigzag, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _ring_vjp(q, k, v, kv_mask, ring, causal, zigzag, scale):
    return _ring_forward(q, k, v, kv_mask, ring=ring, causal=causal, zigzag=zigzag, scale=scale)[0]


def _ring_vjp_fwd(q, k, v, kv_mask, ring, causal, zigzag, scale):
    out, lse = _ring_forward(q, k, v, kv_mask, ring=ring, causal=causal, zigzag=zigzag, scale=scale)
    return out, (q, k, v, kv_mask, out, lse)


def _ring_vjp_bwd(ring, causal, zigzag, scale, residuals, do):
    q, k, v, kv_mask, out, lse = residuals
    dq, dk, dv = _ring_backward(q, k, v, kv_mask, out, lse, do, ring=ring, causal=causal, zigzag=zigzag,
                                scale=scale)
    return dq, dk, dv, None


_ring_vjp.defvjp(_ring_vjp_fwd, _ring_vjp_bwd)
