"""JIT-CFG, SIT-CFG and CFG-renorm on a context-dependent toy model, through one batched call."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stiv_jax.diffusion import flow
from stiv_jax.diffusion.guidance import Guidance, cfg_renorm, guided_velocity
from numerics import assert_close

SHAPE = (2, 4, 3, 3, 5)


class ToyModel:
    """Nonlinear in x, t and the context; records the batch sizes it was called with."""

    def __init__(self):
        self.calls, self.inputs = [], []

    def __call__(self, x, t, context):
        self.calls.append(x.shape[0])
        self.inputs.append(x)
        return jnp.sin(x * context["scale"][:, None, None, None, None]) + t[:, None, None, None, None] * x


def _setup(seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    x, clean, noise = (jax.random.normal(k, SHAPE) for k in ks)
    mask = jnp.zeros(SHAPE[:2], bool).at[:, 0].set(True)
    cond_ctx = {"scale": jnp.array([1.5, 2.0])}
    null_ctx = {"scale": jnp.array([0.3, 0.3])}
    return dict(latents=x, timesteps=jnp.array([0.3, 0.7]), clean=clean, frame_mask=mask, noise=noise,
                cond_context=cond_ctx, null_context=null_ctx)


def test_jit_cfg_scale_one_equals_the_conditional_prediction_in_one_batched_call():
    args = _setup()
    model = ToyModel()
    guided = guided_velocity(model, Guidance(mode="jit", scale=1.0, renorm=False), **args)
    assert model.calls == [4]                           # cond + uncond in ONE call
    x_cond = flow.replace_frames(args["latents"], args["clean"], args["frame_mask"])
    expected = ToyModel()(x_cond, args["timesteps"], args["cond_context"])
    assert_close(guided, expected, ulps=16)         # u + 1 * (c - u): two roundings of the scale
    # A scale other than 1 moves away from it (the assertion above can fail).
    other = guided_velocity(ToyModel(), Guidance(mode="jit", scale=3.0, renorm=False), **args)
    assert float(jnp.abs(other - expected).max()) > 1e-2


def test_unconditional_branch_sees_given_frames_noised_to_t_or_zero():
    args = _setup(1)
    model = ToyModel()
    guided_velocity(model, Guidance(mode="jit", null_image="noisy", renorm=False), **args)
    uncond_in = np.asarray(model.inputs[0][2:])
    expected = flow.interpolate(args["clean"], args["noise"], args["timesteps"])[:, 0]
    assert_close(uncond_in[:, 0], expected, ulps=16)
    np.testing.assert_array_equal(np.asarray(model.inputs[0][:2])[:, 0], np.asarray(args["clean"])[:, 0])
    model = ToyModel()
    guided_velocity(model, Guidance(mode="jit", null_image="zero", renorm=False), **args)
    np.testing.assert_array_equal(np.asarray(model.inputs[0][2:])[:, 0], 0.0)


def test_sit_cfg_runs_three_passes_and_equals_jit_cfg_when_both_scales_match():
    args = _setup(2)
    model = ToyModel()
    sit = guided_velocity(model, Guidance(mode="sit", scale=4.0, image_scale=4.0, renorm=False), **args)
    assert model.calls == [6]
    jit = guided_velocity(ToyModel(), Guidance(mode="jit", scale=4.0, renorm=False), **args)
    assert_close(sit, jit, ulps=64)   # the same combination of three predictions, grouped differently
    sit2 = guided_velocity(ToyModel(), Guidance(mode="sit", scale=4.0, image_scale=1.0, renorm=False), **args)
    assert float(jnp.abs(sit2 - jit).max()) > 1e-2


def test_renorm_output_has_the_conditional_norm_and_the_guided_direction():
    k1, k2 = jax.random.split(jax.random.key(3))
    guided = 5.0 * jax.random.normal(k1, SHAPE)
    cond = jax.random.normal(k2, SHAPE)
    out = np.asarray(cfg_renorm(guided, cond))
    for i in range(SHAPE[0]):
        assert np.linalg.norm(out[i]) == pytest.approx(float(jnp.linalg.norm(cond[i])), rel=1e-5)
        cos = np.dot(out[i].ravel(), np.asarray(guided[i]).ravel()) / (
            np.linalg.norm(out[i]) * np.linalg.norm(np.asarray(guided[i])))
        assert cos == pytest.approx(1.0, abs=1e-6)


def test_renorm_in_guidance_uses_the_generated_frames_norm():
    args = _setup(4)
    out = np.asarray(guided_velocity(ToyModel(), Guidance(mode="jit", scale=6.0, renorm=True), **args))
    x_cond = flow.replace_frames(args["latents"], args["clean"], args["frame_mask"])
    cond = np.asarray(ToyModel()(x_cond, args["timesteps"], args["cond_context"]))
    for i in range(SHAPE[0]):
        assert np.linalg.norm(out[i, 1:]) == pytest.approx(np.linalg.norm(cond[i, 1:]), rel=1e-5)
