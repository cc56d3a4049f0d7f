"""Ring, hybrid (Ulysses x ring) and Ulysses context-parallel attention equal unsharded attention on 8 fake devices:
values and gradients, bidirectional and causal (zig-zag and contiguous chunks), with head counts Ulysses cannot
split, and the compiled programs move data with the collectives each method promises.

Tolerances are normwise relative errors ``||x - ref|| / ||ref||`` bounded by ``normwise_tolerance``: rounding in a
reduction of ``n`` terms grows like ``sqrt(n) * eps`` of the compute dtype, times the few chained operations of
attention (scores, exp, weighted sum, normalisation; their transposes in the backward); the constant 32 leaves a
margin of ~3 over those ~10 chained roundings. A wrong chunk, position or missing gradient term is an O(1) error.
"""
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from stiv_jax.parallel import context_attention, mesh as mesh_lib
from stiv_jax.parallel.rules import preset_rules

pytestmark = pytest.mark.unoptimized_compile  # a few steps of many programs: compiling dominates


def normwise_tolerance(dtype, n: int) -> float:
    return 32 * float(jnp.finfo(dtype).eps) * np.sqrt(n)


def normwise_error(x, ref) -> float:
    x, ref = np.asarray(x, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))


def _mesh(context):
    return mesh_lib.build_mesh(ml_collections.ConfigDict({"ici": dict(data=8 // context, context=context)}))


def _inputs(batch=8, length=32, heads=6, head_dim=8, dtype=jnp.float32, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q, k, v, w = [jax.random.normal(key, (batch, length, heads, head_dim), jnp.float32) for key in keys]
    return q.astype(dtype), k.astype(dtype), v.astype(dtype), w


def _loss_and_grads(attend, q, k, v, w, mask=None):
    def loss(q, k, v):
        out = attend(q, k, v, mask)
        return jnp.sum(out.astype(jnp.float32) * w), out
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)


def _reference(q, k, v, mask, causal):
    mask = None if mask is None else mask[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)


def _check(method, context, *, causal, heads, zigzag=True, ulysses_size=2, mask=None, dtype=jnp.float32):
    q, k, v, w = _inputs(heads=heads, dtype=dtype)
    # The reference always runs unsharded in float32 (the exact answer the sharded run approximates).
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    (_, ref_out), ref_grads = _loss_and_grads(lambda q, k, v, m: _reference(q, k, v, m, causal), *f32, w, mask)
    attend = lambda q, k, v, m: context_attention.context_parallel_attention(  # noqa: E731
        q, k, v, method=method, mask=m, causal=causal, zigzag=zigzag, ulysses_size=ulysses_size)
    with mesh_lib.activate(_mesh(context), preset_rules("fsdp_context")):
        (_, out), grads = _loss_and_grads(attend, q, k, v, w, mask)
    tol = normwise_tolerance(dtype, q.shape[1])
    errors = [normwise_error(out, ref_out)] + [normwise_error(g, r) for g, r in zip(grads, ref_grads)]
    assert max(errors) < tol, (errors, tol)
    return errors


@pytest.mark.parametrize("context", [2, 4, 8])
@pytest.mark.parametrize("causal", [False, True])
def test_ring_attention_matches_unsharded_values_and_grads(context, causal):
    _check("ring", context, causal=causal, heads=6)       # 6 heads: Ulysses cannot split them over 4 or 8


@pytest.mark.parametrize("context", [4, 8])
def test_causal_ring_with_contiguous_chunks_matches_unsharded(context):
    _check("ring", context, causal=True, heads=6, zigzag=False)


@pytest.mark.parametrize("context, ulysses_size", [(2, 2), (4, 2), (8, 2), (8, 4)])
@pytest.mark.parametrize("causal", [False, True])
def test_hybrid_attention_matches_unsharded_values_and_grads(context, ulysses_size, causal):
    _check("hybrid", context, causal=causal, heads=12, ulysses_size=ulysses_size)


@pytest.mark.parametrize("context", [2, 4, 8])
def test_ulysses_attention_matches_unsharded_values_and_grads(context):
    _check("ulysses", context, causal=True, heads=8)


@pytest.mark.parametrize("method", ["ring", "hybrid"])
def test_key_padding_mask_and_empty_rows(method):
    """A key mask travels with its keys; a sample without any real key gives zeros and zero gradients."""
    lengths = jnp.array([32, 20, 7, 0, 32, 1, 16, 31])
    mask = jnp.arange(32)[None, :] < lengths[:, None]
    q, k, v, w = _inputs(heads=6)
    attend = lambda q, k, v, m: context_attention.context_parallel_attention(  # noqa: E731
        q, k, v, method=method, mask=m, ulysses_size=2)
    with mesh_lib.activate(_mesh(4), preset_rules("fsdp_context")):
        (_, out), grads = _loss_and_grads(attend, q, k, v, w, mask)
    keep = lengths > 0
    (_, ref_out), ref_grads = _loss_and_grads(lambda q, k, v, m: _reference(q, k, v, m, False),
                                              q[keep], k[keep], v[keep], w[keep], mask[keep])
    tol = normwise_tolerance(jnp.float32, 32)
    assert normwise_error(out[keep], ref_out) < tol
    for g, r in zip(grads, ref_grads):
        assert normwise_error(g[keep], r) < tol
    assert not np.any(np.asarray(out[~keep])) and all(not np.any(np.asarray(g[~keep])) for g in grads)


def test_bfloat16_ring_is_as_close_to_exact_as_its_dtype_allows():
    errors = _check("ring", 4, causal=True, heads=6, dtype=jnp.bfloat16)
    assert max(errors) > normwise_tolerance(jnp.float32, 32)   # really computed in bf16, not upcast throughout


def test_ulysses_and_hybrid_reject_heads_they_cannot_split():
    q, k, v, _ = _inputs(heads=6)
    with mesh_lib.activate(_mesh(4), preset_rules("fsdp_context")):
        with pytest.raises(ValueError, match="context_attention='ring'"):
            context_attention.context_parallel_attention(q, k, v, method="ulysses")
        with pytest.raises(ValueError, match="context_ulysses_size"):
            context_attention.context_parallel_attention(q, k, v, method="hybrid", ulysses_size=4)
        with pytest.raises(ValueError, match="context_ulysses_size=3"):
            context_attention.context_parallel_attention(q, k, v, method="hybrid", ulysses_size=3)


def _compiled_collectives(method, context, *, causal=False, ulysses_size=2):
    q, k, v, w = _inputs(heads=12)
    fn = jax.grad(lambda q, k, v: jnp.sum(w * context_attention.context_parallel_attention(
        q, k, v, method=method, causal=causal, ulysses_size=ulysses_size)), argnums=(0, 1, 2))
    with mesh_lib.activate(_mesh(context), preset_rules("fsdp_context")):
        hlo = jax.jit(fn).lower(q, k, v).compile().as_text()
    count = lambda op: len(re.findall(rf" {op}(-start)?\(", hlo))  # noqa: E731
    return {op: count(op) for op in ("collective-permute", "all-to-all", "all-gather", "all-reduce")}


@pytest.mark.parametrize("context", [2, 4, 8])
def test_ring_program_holds_the_expected_collective_permutes_and_no_gather(context):
    """Forward: k and v hop C - 1 times; backward: dk and dv travel C times (home again). The backward's own k/v
    hops carry the same values as the forward's, and XLA reuses those (no remat in this program)."""
    counts = _compiled_collectives("ring", context)
    assert counts["collective-permute"] == 2 * (context - 1) + 2 * context, counts
    assert counts["all-gather"] == 0 and counts["all-to-all"] == 0, counts


def test_zigzag_adds_at_most_two_half_chunk_permutes_per_reordered_tensor():
    """Zig-zag: q, k, v in and the output back (forward), their transposes in the backward: 2 permutes each."""
    zigzag, plain = _compiled_collectives("ring", 4, causal=True), _compiled_collectives("ring", 4, causal=False)
    extra = zigzag["collective-permute"] - plain["collective-permute"]
    assert 2 * 4 <= extra <= 2 * (4 + 4), (zigzag, plain)


def test_hybrid_program_groups_its_all_to_alls_and_rings_across_groups():
    """Context 8 as 4 Ulysses groups of 2: the ring's permutes over 4 members, Ulysses' all-to-alls (grouped)."""
    hybrid, ulysses = _compiled_collectives("hybrid", 8, ulysses_size=2), _compiled_collectives("ulysses", 4)
    ring = 8 // 2
    assert hybrid["collective-permute"] == 2 * (ring - 1) + 2 * ring, hybrid
    assert hybrid["all-to-all"] == ulysses["all-to-all"] >= 6, (hybrid, ulysses)   # q, k, v, out and transposes
    assert hybrid["all-gather"] == 0, hybrid
