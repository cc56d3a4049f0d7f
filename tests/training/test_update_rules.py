"""The model-agnostic update: non-finite guard, gradient accumulation, AdaFactor state sharding, LR schedule."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from stiv_jax.parallel import mesh as mesh_lib
from stiv_jax.parallel import rules as rules_lib
from stiv_jax.training import optimizer as optimizer_lib
from stiv_jax.training import state as state_lib
from stiv_jax.training import update as update_lib
from numerics import assert_close


def _optim(**overrides):
    config = ml_collections.ConfigDict(dict(name="adamw", lr=0.1, warmup_steps=0, schedule="constant",
                                            decay_steps=10, b1=0.9, b2=0.999, weight_decay=0.0, grad_clip=1.0,
                                            min_dim_size_to_factor=4, block_rms_clip=None))
    config.update(overrides)
    return config


def _quadratic_loss(params, batch, rng):
    del rng
    pred = batch["x"] @ params["w"]
    return jnp.mean(jnp.square(pred - batch["y"]))


def test_nonfinite_loss_skips_update_and_counts_streak():
    tx = optimizer_lib.build_optimizer(_optim())
    params = {"w": jnp.ones((3, 2))}
    state = state_lib.create_state(params, tx)
    batch = {"x": jnp.ones((4, 3)), "y": jnp.zeros((4, 2))}
    bad = {"x": batch["x"].at[0, 0].set(jnp.nan), "y": batch["y"]}
    step = jax.jit(lambda s, b: update_lib.guarded_update(s, *jax.value_and_grad(_quadratic_loss)(
        s.params, b, None), tx, ema_decay=0.5))
    s1, m1 = step(state, batch)
    assert int(m1["update_skipped"]) == 0 and not np.allclose(s1.params["w"], 1.0)
    s2, m2 = step(s1, bad)
    s3, m3 = step(s2, bad)
    for tree in ("params", "ema_params", "opt_state"):
        for a, b in zip(jax.tree.leaves(getattr(s1, tree)), jax.tree.leaves(getattr(s3, tree))):
            np.testing.assert_array_equal(a, b, err_msg=tree)
    assert (int(s3.step), int(s3.skipped_steps), int(s3.nonfinite_streak)) == (3, 2, 2)
    assert [int(m2["nonfinite_streak"]), int(m3["nonfinite_streak"])] == [1, 2]
    s4, _ = step(s3, batch)
    assert (int(s4.skipped_steps), int(s4.nonfinite_streak)) == (2, 0)
    assert not np.array_equal(s4.params["w"], s3.params["w"])


def test_gradient_accumulation_equals_the_full_batch_gradient():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)}
    batch = {"x": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
             "y": jnp.asarray(rng.normal(size=(8, 2)), jnp.float32)}
    full_loss, full_grads = update_lib.accumulated_loss_and_grads(_quadratic_loss, params, batch, None, 1)
    acc_loss, acc_grads = jax.jit(lambda p, b: update_lib.accumulated_loss_and_grads(
        _quadratic_loss, p, b, jax.random.key(0), 4))(params, batch)
    # The mean over 8 rows taken as 4 means of 2: a few eps of the scale.
    assert_close(acc_loss, full_loss, ulps=16)
    assert_close(acc_grads["w"], full_grads["w"], ulps=16)
    with pytest.raises(ValueError, match="grad_accum_steps"):
        update_lib.split_microbatches(batch, 3)


def test_adafactor_factored_moments_are_sharded_along_their_surviving_dim():
    tx = optimizer_lib.build_optimizer(_optim(name="adafactor"))
    specs = {"k": P("embed", "mlp"), "sq": P("embed", "mlp"), "b": P("mlp")}
    params = {"k": jax.ShapeDtypeStruct((8, 16), jnp.float32), "sq": jax.ShapeDtypeStruct((8, 8), jnp.float32),
              "b": jax.ShapeDtypeStruct((16,), jnp.float32)}
    opt_state = jax.eval_shape(tx.init, params)
    opt_specs = state_lib.opt_state_logical_specs(tx, opt_state, specs, params)
    found = {}
    for (path, leaf), spec in zip(jax.tree_util.tree_flatten_with_path(opt_state)[0], jax.tree.leaves(
            opt_specs, is_leaf=lambda x: isinstance(x, P))):
        found[jax.tree_util.keystr(path)] = (leaf.shape, spec)
    by_suffix = lambda suffix: [v for k, v in found.items() if k.endswith(suffix)]  # noqa: E731
    # [8, 16] kernel: v_row drops the largest dim (mlp, 16) -> keeps embed; v_col drops embed -> keeps mlp.
    assert by_suffix(".v_row['k']") == [((8,), P("embed"))]
    assert by_suffix(".v_col['k']") == [((16,), P("mlp"))]
    # Square kernel: the tie follows optax's rule (v_row drops the later axis).
    assert by_suffix(".v_row['sq']") == [((8,), P("embed"))]
    assert by_suffix(".v_col['sq']") == [((8,), P("mlp"))]
    # Unfactored 1-D parameter: the full second moment and the momentum take the parameter's spec.
    assert ((16,), P("mlp")) in by_suffix("['b']")
    assert all(spec == P() for shape, spec in found.values() if shape in ((), (1,)))


def test_constant_schedule_warms_up_linearly_and_cosine_decays():
    const = optimizer_lib.learning_rate_schedule(_optim(lr=1.0, warmup_steps=4))
    np.testing.assert_allclose([const(i) for i in (0, 2, 4, 100)], [0.0, 0.5, 1.0, 1.0])
    cosine = optimizer_lib.learning_rate_schedule(_optim(lr=1.0, warmup_steps=0, schedule="cosine",
                                                         decay_steps=10))
    np.testing.assert_allclose([cosine(0), cosine(5), cosine(10)], [1.0, 0.5, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="config.optim.name"):
        optimizer_lib.build_optimizer(_optim(name="sgd"))


def test_sharding_check_requires_98_percent_of_parameter_bytes_over_fsdp():
    mesh = mesh_lib.build_mesh(ml_collections.ConfigDict({"ici": dict(data=2, fsdp=4)}))
    params = {"big": jax.ShapeDtypeStruct((64, 64), jnp.float32), "small": jax.ShapeDtypeStruct((8,), jnp.float32)}
    good = {"big": P("embed", "mlp"), "small": P("norm")}
    bad = {"big": P("mlp", "heads"), "small": P("embed")}
    rules = rules_lib.preset_rules("fsdp")
    to_sharding = lambda specs: jax.tree.map(  # noqa: E731
        lambda s: jax.sharding.NamedSharding(mesh, nn.logical_to_mesh_axes(s, rules)), specs,
        is_leaf=lambda x: isinstance(x, P))
    assert rules_lib.check_parameter_sharding(params, to_sharding(good), mesh) > 0.99
    with pytest.raises(ValueError, match=r"\['big'\]"):
        rules_lib.check_parameter_sharding(params, to_sharding(bad), mesh)


def test_mesh_fills_ici_and_dcn_autos_and_names_bad_keys():
    mesh = mesh_lib.build_mesh(ml_collections.ConfigDict({"ici": dict(data=1, fsdp=-1, context=2),
                                                         "dcn": dict(data=-1)}))
    assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "context": 2, "tensor": 1}
    with pytest.raises(ValueError, match="config.mesh.ici"):
        mesh_lib.build_mesh(ml_collections.ConfigDict({"ici": dict(data=-1, fsdp=-1)}))
    with pytest.raises(ValueError, match="config.mesh.rules"):
        mesh_lib.logical_rules(ml_collections.ConfigDict({"rules": "zero3"}))


def test_a_nan_learning_rate_applies_no_update_and_is_refused_at_start_up():
    from stiv_jax import train as train_lib
    from trainer_testlib import tiny_config
    tx = optimizer_lib.build_optimizer(_optim(lr=float("nan")))
    state = state_lib.create_state({"w": jnp.ones((3, 2))}, tx)
    batch = {"x": jnp.ones((4, 3)), "y": jnp.zeros((4, 2))}
    loss, grads = jax.value_and_grad(_quadratic_loss)(state.params, batch, None)
    new, metrics = update_lib.guarded_update(state, loss, grads, tx, ema_decay=0.5)
    assert np.isfinite(float(loss)) and np.isfinite(float(metrics["grad_norm"]))   # only the update is NaN
    assert int(metrics["update_skipped"]) == 1 and np.isnan(float(metrics["update_norm"]))
    np.testing.assert_array_equal(new.params["w"], 1.0)
    np.testing.assert_array_equal(new.ema_params["w"], 1.0)
    for lr, schedule in ((float("nan"), "constant"), (float("inf"), "cosine"), (-1e-3, "constant")):
        config = tiny_config(**{"optim.lr": lr, "optim.schedule": schedule})
        with pytest.raises(ValueError, match=r"config.optim.lr=.*must be finite and >= 0"):
            train_lib.check_learning_rate(config)
    train_lib.check_learning_rate(tiny_config())


def test_metrics_jsonl_stays_strict_json_for_nan_and_inf(tmp_path):
    import json
    from stiv_jax.training import metrics as metrics_lib
    writer = metrics_lib.MetricWriter(str(tmp_path))
    writer.write(1, {"loss": float("nan"), "grad_norm": float("inf"), "learning_rate": -float("inf"), "mfu": 0.5})
    writer.close()
    line = open(tmp_path / "metrics.jsonl").read().strip()
    row = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in {line}"))
    assert row == {"step": 1, "loss": "nan", "grad_norm": "inf", "learning_rate": "-inf", "mfu": 0.5}
    back = metrics_lib.read_metrics(str(tmp_path / "metrics.jsonl"))[0]
    assert np.isnan(back["loss"]) and back["grad_norm"] == np.inf and back["learning_rate"] == -np.inf


def test_train_cli_refuses_a_nan_learning_rate_in_one_line_before_creating_the_workdir(tmp_path):
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    workdir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "stiv_jax.train", "--config=experiments/demo.py",
                           f"--workdir={workdir}", "--config.optim.lr=nan"], cwd=repo, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu"), timeout=300)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: ValueError: config.optim.lr=nan with schedule='constant' gives learning rate nan at "
                      "step 0; it must be finite and >= 0"], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "(full trace: STIV_TRACE=1)" in proc.stderr
    assert not workdir.exists()
