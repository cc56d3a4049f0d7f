"""Ulysses context-parallel attention equals plain attention (values and gradients) on 8 fake devices."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from stiv_jax.parallel import context_attention, mesh as mesh_lib
from stiv_jax.parallel.rules import preset_rules


def _mesh(**ici):
    return mesh_lib.build_mesh(ml_collections.ConfigDict({"ici": ici}))


def _qkv(batch, length, heads, head_dim, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return [jax.random.normal(k, (batch, length, heads, head_dim), jnp.float32) for k in keys]


def _run(fn, mesh, rules, *args):
    with mesh_lib.activate(mesh, rules):
        return jax.jit(fn)(*args)


@pytest.mark.parametrize("ici, rules_name", [
    (dict(data=2, context=4), "fsdp_context"),        # spatial tokens over context
    (dict(fsdp=2, context=2, tensor=2), "default"),  # context x tensor: heads split over both
])
def test_ulysses_spatial_attention_matches_unsharded_values_and_grads(ici, rules_name):
    mesh, rules = _mesh(**ici), preset_rules(rules_name)
    q, k, v = _qkv(4, 32, 8, 16)
    mask = jnp.arange(32)[None, :] < jnp.array([32, 20, 7, 32])[:, None]

    def loss(q, k, v, impl):
        out = context_attention.attention(q, k, v, impl=impl, mask=mask)
        return jnp.sum(jnp.sin(out)), out

    grad = lambda impl: jax.value_and_grad(lambda *a: loss(*a, impl), argnums=(0, 1, 2), has_aux=True)  # noqa
    (_, ref_out), ref_grads = _run(grad("xla"), mesh, rules, q, k, v)
    (_, out), grads = _run(grad("ulysses"), mesh, rules, q, k, v)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


def test_ulysses_temporal_attention_over_sharded_frames_matches_unsharded():
    mesh = _mesh(data=2, context=4)
    rules = (("activation_frames", "context"),) + preset_rules("fsdp")
    q, k, v = _qkv(2, 16, 4, 8, seed=1)   # [batch * spatial, frames, heads, head_dim]
    ref = _run(lambda q, k, v: context_attention.attention(q, k, v, impl="xla"), mesh, rules, q, k, v)
    out = _run(lambda q, k, v: context_attention.ulysses_attention(q, k, v, length_name="activation_frames"),
               mesh, rules, q, k, v)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    # The sequence really was split over the context axis: the compiled program holds all-to-alls.
    with mesh_lib.activate(mesh, rules):
        hlo = jax.jit(lambda q, k, v: context_attention.ulysses_attention(
            q, k, v, length_name="activation_frames")).lower(q, k, v).compile().as_text()
    assert "all-to-all" in hlo


def test_ulysses_rejects_heads_not_divisible_by_context():
    mesh, rules = _mesh(data=2, context=4), preset_rules("fsdp_context")
    q, k, v = _qkv(2, 16, 2, 8)
    with pytest.raises(ValueError, match="num_heads"):
        _run(lambda q, k, v: context_attention.ulysses_attention(q, k, v), mesh, rules, q, k, v)
