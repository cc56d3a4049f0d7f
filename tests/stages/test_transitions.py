"""Stage transitions: T2I -> T2V keeps the image model's function, the high-res init picks the right source per
parameter, and mismatches are refused by name."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import common
from stiv_jax.checkpointing import exports
from stiv_jax.checkpointing import manager as ckpt
from stiv_jax.model.sizes import size_fields
from stiv_jax.parallel import mesh as mesh_lib
from stiv_jax.stages import surgery, transition
from stiv_jax.training import state as state_lib
from stiv_jax.training import step as step_lib
from stiv_jax.model.bundle import build_model_bundle
from stiv_jax.training.optimizer import build_optimizer
from numerics import assert_close

pytestmark = pytest.mark.unoptimized_compile  # a few steps of many programs: compiling dominates


def local_config(stage, **model_overrides):
    config = __import__(f"experiments.{stage}", fromlist=["x"]).get_config("runlocal")
    for key, value in model_overrides.items():
        config.model[key] = value
    return config


def fresh_state(config):
    bundle = build_model_bundle(config)
    mesh = mesh_lib.build_mesh(config.mesh, jax.devices()[:1])  # one device: the surgery is mesh-agnostic
    rules = mesh_lib.logical_rules(config.mesh)
    state, _ = state_lib.init_state(lambda: bundle.init_boxed_params(jax.random.key(config.seed)),
                                    build_optimizer(config.optim), mesh, rules)
    return bundle, state


def perturbed(params, seed):
    """Random weights everywhere, so zero-initialised gates and projections are live."""
    flat = exports.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(flat))
    return exports.unflatten({path: value + 0.2 * jax.random.normal(key, value.shape, value.dtype)
                              for key, (path, value) in zip(keys, sorted(flat.items()))})


def save_stage(config, workdir, seed):
    """A finished stage: EMA and raw parameters differ, so the test sees which one is loaded."""
    bundle, state = fresh_state(config)
    state = state.replace(params=perturbed(state.params, seed + 100), ema_params=perturbed(state.params, seed))
    manager = ckpt.make_manager(str(workdir), async_save=False)
    ckpt.save(manager, 7, state=state, config=config)
    manager.wait_until_finished()
    manager.close()
    return bundle, state


TEXTS, TIMES = ("a red kite over the sea", ""), (0.3, 0.8)
_JITTED = {}


def velocity(bundle, params, latents, repeat=1):
    """The velocity of ``latents`` ``[2 * repeat, ...]`` at fixed timesteps, text and micro-conditions (256x256
    source, stride 3, 20 frames); sample ``i`` gets the text and time of sample ``i // repeat`` of two."""
    ids, mask = (jnp.repeat(jnp.asarray(a), repeat, axis=0) for a in bundle.tokenize(list(TEXTS)))
    t = jnp.repeat(jnp.asarray(TIMES), repeat)
    micro = jnp.asarray([[256.0, 256.0, 0.0, 0.0, 3.0, 20.0]] * (2 * repeat))
    if id(bundle) not in _JITTED:   # one compile per bundle and shape (kept alive with the bundle)
        _JITTED[id(bundle)] = (bundle, jax.jit(lambda *a: bundle.velocity(*a[:-1], micro_conditions=a[-1])))
    return np.asarray(_JITTED[id(bundle)][1](params, latents, t, ids, mask, micro))


@pytest.fixture(scope="module")
def t2i_256_stage(tmp_path_factory):
    """A finished tiny T2I-256 stage, shared by the tests that start from it."""
    workdir = tmp_path_factory.mktemp("t2i_256")
    bundle, state = save_stage(local_config("t2i_256"), workdir, seed=1)
    return workdir, bundle, state


@pytest.mark.parametrize("temporal_patch", [2, 1])
def test_t2v_from_t2i_checkpoint_reproduces_t2i_frame_by_frame(t2i_256_stage, temporal_patch):
    t2i_dir, t2i_bundle, t2i_state = t2i_256_stage
    config = local_config("t2v_256", temporal_patch=temporal_patch)
    config.init.sources.t2i = str(t2i_dir)
    bundle, state = fresh_state(config)
    reports = []
    state = transition.initialize_from_sources(config, state, log=reports.append)

    f, h, w, c = bundle.latent_shape
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(2, f // temporal_patch, 1, h, w, c)).astype(np.float32)
    # Temporal patch 2: frames come in identical pairs (a static video per token), as inflation assumes.
    video = np.repeat(frames, temporal_patch, axis=2).reshape(2, f, h, w, c)
    got = velocity(bundle, state.params, jnp.asarray(video))
    # The image model sees every frame alone (one batch of 2 x f one-frame clips, frame-major per sample).
    want = velocity(t2i_bundle, t2i_state.ema_params, jnp.asarray(video.reshape(2 * f, 1, h, w, c)), repeat=f)
    want = want.reshape(2, f, h, w, c)
    for i in range(f):
        assert_close(got[:, i], want[:, i], ulps=256, what=f"frame {i}")   # one-frame batches vs a video
    assert np.abs(got).mean() > 1e-2  # a live function, not two zero outputs
    # EMA and params both start from the T2I EMA; the report names loaded, new and reshaped tensors.
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.ema_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    report = reports[0]
    assert "temporal_attn/out/kernel" in report and "new " in report
    if temporal_patch == 2:
        assert "dit/patch_embed/proj/kernel" in report and "copied along time and divided x2" in report
        assert "dit/final_proj/bias" in report


def test_high_res_t2v_takes_spatial_from_t2i_512_and_temporal_from_t2v_256(tmp_path):
    _, t2i = save_stage(local_config("t2i_512"), tmp_path / "t2i_512", seed=2)
    _, t2v = save_stage(local_config("t2v_256"), tmp_path / "t2v_256", seed=3)
    config = local_config("t2v_512")
    config.init.sources.t2i = str(tmp_path / "t2i_512")
    config.init.sources.t2v = str(tmp_path / "t2v_256")
    _, state = fresh_state(config)
    reports = []
    state = transition.initialize_from_sources(config, state, log=reports.append)

    got = exports.flatten(jax.device_get(state.params))
    from_t2i = exports.flatten(jax.device_get(t2i.ema_params))
    from_t2v = exports.flatten(jax.device_get(t2v.ema_params))
    counts = {"t2i": 0, "t2v": 0, "inflated": 0}
    for path, value in got.items():
        if re.search(common.TEMPORAL, path):   # temporal SA and its gate
            np.testing.assert_array_equal(value, from_t2v[path], err_msg=path)
            assert path not in from_t2i, path  # the image model has no temporal attention
            counts["t2v"] += 1
        elif path == "dit/patch_embed/proj/kernel":
            np.testing.assert_allclose(value, np.concatenate([from_t2i[path]] * 2) / 2, err_msg=path)
            counts["inflated"] += 1
        elif path.startswith("dit/final_proj/"):
            np.testing.assert_array_equal(value, np.concatenate([from_t2i[path]] * 2, axis=-1), err_msg=path)
            counts["inflated"] += 1
        else:
            np.testing.assert_array_equal(value, from_t2i[path], err_msg=path)
            counts["t2i"] += 1
    depth = size_fields(config.model.size)["depth"]
    # Per block: temporal SA's 10 tensors (q/k/v/out kernels and biases, 2 QK-norm scales) and the gate.
    assert counts["t2v"] == (depth + config.model.decoder_depth) * 11, counts
    assert counts["inflated"] == 3 and counts["t2i"] > 20, counts
    # T2V-256's unused spatial weights are reported as dropped; T2I-512 gives everything it has.
    assert "of t2v" in reports[0] and "of t2i" not in reports[0]


def test_mismatches_are_refused_naming_every_parameter():
    target = {"dit/patch_embed/proj/kernel": (96, 64), "dit/block_0/ffn/wi/kernel": (64, 256),
              "dit/block_0/temporal_attn/out/kernel": (2, 32, 64), "dit/extra/bias": (64,)}
    source = {"dit/patch_embed/proj/kernel": (48, 64), "dit/block_0/ffn/wi/kernel": (64, 128),
              "dit/block_0/temporal_attn/out/kernel": (2, 32, 64)}
    with pytest.raises(surgery.TransitionError) as err:
        surgery.plan_transition(target, {"t2i": source}, [(r".*", "t2i")])
    message = str(err.value)
    assert "dit/block_0/ffn/wi/kernel: source [64, 128] vs target [64, 256]" in message
    assert "dit/patch_embed/proj/kernel" in message and "inflate_patch_embed=True" in message
    assert "missing from source 't2i'" in message and "dit/extra/bias" in message
    with pytest.raises(surgery.TransitionError, match="covered by no config.init.assign pattern"):
        surgery.plan_transition(target, {"t2i": source}, [(r"ffn", "t2i")])
    with pytest.raises(surgery.TransitionError, match=r"sources \['t2v'\]"):
        surgery.plan_transition(target, {"t2i": source}, [(r".*", "t2v")])


def test_resolution_change_requires_the_interpolated_rope_scale(t2i_256_stage):
    config = local_config("t2i_512")
    config.data.resolution = 64  # token grid 4 -> 8: positions must be scaled by 0.5
    config.init.sources.t2i = str(t2i_256_stage[0])
    _, state = fresh_state(config)
    with pytest.raises(surgery.TransitionError, match=r"rope_spatial_scale.*0\.5"):
        transition.initialize_from_sources(config, state, log=print)


def test_missing_source_checkpoint_names_the_config_key(tmp_path):
    config = local_config("t2v_256")
    config.init.sources.t2i = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.init.sources.t2i"):   # before the state is touched
        transition.initialize_from_sources(config, state=None)


def _t2v_after_temporal_steps(t2i_dir, *, gate: bool, steps: int = 3):
    """A T2V model initialised from ``t2i_dir`` after ``steps`` Adam steps (lr 1e-4) of its temporal branch only
    (the spatial weights stay the image model's, so any change is the temporal branch's)."""
    config = local_config("t2v_256", temporal_gate=gate)
    config.init.sources.t2i = str(t2i_dir)
    bundle, state = fresh_state(config)
    params = transition.initialize_from_sources(config, state, log=lambda _: None).params
    temporal = {path for path in exports.flatten(params) if re.search(common.TEMPORAL, path)}
    assert temporal, "no temporal parameters"
    res, frames = config.data.resolution, config.data.frames
    rng = np.random.default_rng(0)
    ids, mask = (jnp.asarray(a) for a in bundle.tokenize(["a red kite over the sea", "a dog runs"]))
    batch = dict(video=jnp.asarray(rng.integers(0, 256, (2, frames, res, res, 3), dtype=np.uint8)),
                 text_ids=ids, text_mask=mask,
                 micro_conditions=jnp.asarray([[res, res, 0.0, 0.0, 3.0, frames]] * 2, jnp.float32))
    grad_fn = jax.jit(jax.grad(step_lib.make_loss_fn(config, bundle)))
    tx = optax.adam(1e-4)
    opt_state = tx.init(params)
    for i in range(steps):
        grads = exports.flatten(grad_fn(params, batch, jax.random.key(i)))
        grads = exports.unflatten({p: g if p in temporal else jnp.zeros_like(g) for p, g in grads.items()})
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return bundle, params


def test_gated_temporal_branch_departs_from_t2i_smoothly(t2i_256_stage):
    """Three small steps of the new temporal branch: with the zero-initialised gate after the post-norm the video
    model stays the image model frame by frame (relative change ~1e-4); with the zero-initialised output projection
    alone, the post-norm (slope 1/sqrt(eps) at 0) blows the first non-zero output up to unit variance (~0.4)."""
    t2i_dir, t2i_bundle, t2i_state = t2i_256_stage
    change = {}
    for gate in (True, False):
        bundle, params = _t2v_after_temporal_steps(t2i_dir, gate=gate)
        f, h, w, c = bundle.latent_shape
        frames = np.random.default_rng(1).normal(size=(2, f // 2, 1, h, w, c)).astype(np.float32)
        video = np.repeat(frames, 2, axis=2).reshape(2, f, h, w, c)   # static per temporal token (patch 2)
        got = velocity(bundle, params, jnp.asarray(video))
        want = velocity(t2i_bundle, t2i_state.ema_params, jnp.asarray(video.reshape(2 * f, 1, h, w, c)),
                        repeat=f).reshape(2, f, h, w, c)
        change[gate] = max(np.linalg.norm(got[:, i] - want[:, i]) / np.linalg.norm(want[:, i]) for i in range(f))
    assert change[True] < 1e-3, change
    assert change[False] > 0.05, change
