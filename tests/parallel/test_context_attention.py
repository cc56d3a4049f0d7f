"""Context-parallel attention equals plain attention (values and gradients) on 8 fake devices, alone (Ulysses; ring
and hybrid in test_ring_attention.py) and as the STIV DiT's self-attention (``config.model.context_attention``
ulysses | ring | hybrid, spatial, temporal and full-3D)."""
import dataclasses
import os
import re
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from stiv_jax.parallel import context_attention, mesh as mesh_lib
from stiv_jax.parallel.rules import preset_rules
from numerics import assert_close, assert_trees_close

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_ring_attention import normwise_error, normwise_tolerance  # noqa: E402

pytestmark = pytest.mark.unoptimized_compile  # a few steps of many programs: compiling dominates


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
        if impl == "ulysses":
            out = context_attention.ulysses_attention(q, k, v, mask=mask)
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :])
        return jnp.sum(jnp.sin(out)), out

    grad = lambda impl: jax.value_and_grad(lambda *a: loss(*a, impl), argnums=(0, 1, 2), has_aux=True)  # noqa
    (_, ref_out), ref_grads = _run(grad("xla"), mesh, rules, q, k, v)
    (_, out), grads = _run(grad("ulysses"), mesh, rules, q, k, v)
    assert_close(out, ref_out, ulps=32)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, ulps=64)


def test_ulysses_temporal_attention_over_sharded_frames_matches_unsharded():
    mesh = _mesh(data=2, context=4)
    rules = (("activation_frames", "context"),) + preset_rules("fsdp")
    q, k, v = _qkv(2, 16, 4, 8, seed=1)   # [batch * spatial, frames, heads, head_dim]
    ref = _run(jax.nn.dot_product_attention, mesh, rules, q, k, v)
    out = _run(lambda q, k, v: context_attention.ulysses_attention(q, k, v, length_name="activation_frames"),
               mesh, rules, q, k, v)
    assert_close(out, ref, ulps=32)
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


def test_dit_with_ulysses_self_attention_matches_gspmd_values_and_grads():
    """The whole model under the fsdp_context preset: video tokens over context=4, spatial self-attention
    Ulysses (all-to-all) vs. GSPMD's own partitioning; the same loss and gradients."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model"))
    from test_dit import forward, init_params, make_config, make_inputs
    mesh, rules = _mesh(data=2, context=4), preset_rules("fsdp_context")
    config = make_config(num_heads=8)              # 8 heads: 2 per device after the all-to-all over context=4
    inputs = make_inputs(batch=2)                  # [2, 4 frames, 8x8 latent] -> 16 spatial tokens per frame
    params = init_params(config, inputs)

    def loss_and_grads(model_config):
        apply = forward(model_config)
        fn = jax.value_and_grad(lambda p: jnp.mean(jnp.square(apply(p, inputs))))
        with mesh_lib.activate(mesh, rules):
            lowered = jax.jit(fn).lower(params)
            return lowered.compile().as_text(), jax.jit(fn)(params)

    gspmd_hlo, (ref_loss, ref_grads) = loss_and_grads(config)
    ulysses_hlo, (loss, grads) = loss_and_grads(dataclasses.replace(config, context_attention="ulysses"))
    # GSPMD also moves data with all-to-alls around reshapes; Ulysses adds four per attention call (q, k, v, out).
    count = lambda hlo: hlo.count(" all-to-all(")  # noqa: E731
    assert count(ulysses_hlo) >= count(gspmd_hlo) + 4 * config.depth, (count(ulysses_hlo), count(gspmd_hlo))
    assert_close(loss, ref_loss, ulps=64, what="loss")
    assert_trees_close(grads, ref_grads, ulps=256, what="grads")   # a whole DiT's backward, 4-way sharded



def test_context_parallelism_keeps_every_activation_of_the_dit_sharded():
    """Each sample's tokens over context=2 (Ulysses, fsdp_context), parameters replicated: the compiled forward
    and backward pass must gather nothing. A layer that needs its tokens whole on a device (temporal attention's
    batch x tokens fold, the FFN hidden, cross-attention over the flattened video) would show as an all-gather of
    activations, and its memory would not shrink with the context size."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model"))
    from test_dit import forward, init_params, make_config, make_inputs
    config = make_config(num_heads=8, context_attention="ulysses")
    params = init_params(config, make_inputs(batch=2))
    inputs = make_inputs(batch=4, frames=8)
    inputs["latents"] = jnp.zeros((4, 8, 32, 32, 4))   # 8 frames x 256 spatial tokens per sample
    apply = forward(config)
    fn = jax.grad(lambda p, x: jnp.mean(jnp.square(apply(p, x))))
    with mesh_lib.activate(_mesh(fsdp=4, context=2), preset_rules("fsdp_context")):
        hlo = jax.jit(fn).lower(params, inputs).compile().as_text()
    gathers = [line.strip()[:160] for line in hlo.splitlines() if re.search(r" all-gather(-start)?\(", line)]
    assert not gathers, "\n".join(gathers)
    # The spatial self-attention of every block ran Ulysses: 4 all-to-alls forward and 4 backward.
    blocks = config.depth + config.decoder_depth
    assert len(re.findall(r" all-to-all(-start)?\(", hlo)) >= 8 * blocks


@pytest.mark.parametrize("context, expect_kernel_path", [(1, True), (4, False)])
def test_ulysses_runs_only_where_the_sequence_is_split(monkeypatch, context, expect_kernel_path):
    """With context_attention='ulysses' on a mesh whose context axis is 1, self-attention takes the kernel's own
    sharded path (splash under its shard_map); a Pallas kernel called on global arrays would be replicated."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model"))
    from test_dit import make_config
    from stiv_jax.model import attention_kernels
    config = dataclasses.replace(make_config(num_heads=8), attention_impl="splash", splash_interpret=True,
                                 context_attention="ulysses")
    calls = []
    monkeypatch.setattr(attention_kernels, "splash_attention",
                        lambda q, k, v, **kw: calls.append(q.shape) or attention_kernels.xla_attention(q, k, v))
    q, k, v = _qkv(8, 16, 8, 8)
    fn = lambda q, k, v: attention_kernels.attention(q, k, v, config=config, length_name="activation_length")  # noqa
    out = _run(fn, _mesh(data=8 // context, context=context), preset_rules("fsdp_context"), q, k, v)
    assert_close(out, attention_kernels.xla_attention(q, k, v), ulps=32)
    assert bool(calls) == expect_kernel_path, calls


def _dit_helpers():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model"))
    import test_dit
    return test_dit


@pytest.mark.parametrize("method, context, layout, causal", [
    ("ulysses", 4, "factorized", False),
    ("ring", 8, "factorized", False),      # 4 heads: Ulysses cannot split them over 8 devices
    ("hybrid", 4, "factorized", False),
    ("hybrid", 8, "full3d", False),
    ("ring", 4, "full3d", False),
    ("ring", 2, "temporal", True),         # frames over context, causal temporal attention (zig-zag)
    ("hybrid", 4, "temporal", True),
])
def test_dit_loss_and_grads_equal_the_unsharded_model(method, context, layout, causal):
    """The whole DiT with its self-attention context parallel equals the same DiT run without a mesh. Spatial
    tokens (factorized, full3d) or frames ("temporal": rules put ``activation_frames`` on context) are split."""
    test_dit = _dit_helpers()
    config = test_dit.make_config(num_heads=4, causal_temporal=causal,
                                  attention_layout="full3d" if layout == "full3d" else "factorized")
    inputs = test_dit.make_inputs(batch=4, frames=8 if layout == "temporal" else 4)
    params = test_dit.init_params(config, inputs)

    def loss_and_grads(model_config):
        apply = test_dit.forward(model_config)
        return jax.jit(jax.value_and_grad(lambda p: jnp.mean(jnp.square(apply(p, inputs)))))(params)

    ref_loss, ref_grads = loss_and_grads(config)
    rules = ((("activation_frames", "context"),) + preset_rules("fsdp") if layout == "temporal"
             else preset_rules("fsdp_context"))
    sharded = dataclasses.replace(config, context_attention=method, context_ulysses_size=2)
    with mesh_lib.activate(_mesh(data=8 // context, context=context), rules):
        loss, grads = loss_and_grads(sharded)
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])  # noqa: E731
    # Rounding of a depth-3 stack of blocks over 64-token sequences, float32 (test_ring_attention's bound per
    # attention, times the 3 blocks).
    tol = 3 * normwise_tolerance(jnp.float32, 64)
    assert normwise_error(loss, ref_loss) < tol
    assert normwise_error(flat(grads), flat(ref_grads)) < tol, normwise_error(flat(grads), flat(ref_grads))


@pytest.mark.parametrize("method", ["ring", "hybrid"])
def test_ring_and_hybrid_keep_every_activation_of_the_dit_sharded(method):
    """As for Ulysses above: each sample's tokens over context=4, the compiled forward and backward pass gathers no
    activation; the spatial self-attention of every block moves k/v by collective-permutes."""
    test_dit = _dit_helpers()
    config = test_dit.make_config(num_heads=8, context_attention=method, context_ulysses_size=2)
    params = test_dit.init_params(config, test_dit.make_inputs(batch=2))
    inputs = test_dit.make_inputs(batch=2, frames=8)
    inputs["latents"] = jnp.zeros((2, 8, 32, 32, 4))
    apply = test_dit.forward(config)
    fn = jax.grad(lambda p, x: jnp.mean(jnp.square(apply(p, x))))
    with mesh_lib.activate(_mesh(fsdp=2, context=4), preset_rules("fsdp_context")):
        hlo = jax.jit(fn).lower(params, inputs).compile().as_text()
    gathers = [line.strip()[:160] for line in hlo.splitlines() if re.search(r" all-gather(-start)?\(", line)]
    assert not gathers, "\n".join(gathers)
    ring = 4 if method == "ring" else 2
    blocks = config.depth + config.decoder_depth
    # Per block at least: k, v forward (ring - 1 hops each), dk, dv backward (ring hops each).
    permutes = len(re.findall(r" collective-permute(-start)?\(", hlo))
    assert permutes >= blocks * (2 * (ring - 1) + 2 * ring), permutes
