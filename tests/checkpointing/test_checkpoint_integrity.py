"""Checkpoints carry a SHA-256 manifest; damaged, truncated or incomplete steps are reported by file and skipped
(train moves them aside, export falls back), another model's checkpoint is named as such, and a run whose
updates are all skipped rotates no good checkpoint away. One real tiny run feeds every test."""
import dataclasses
import json
import os
import shutil
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training"))

from stiv_jax.checkpointing import exports  # noqa: E402
from stiv_jax.checkpointing import integrity  # noqa: E402
from stiv_jax.checkpointing import manager as ckpt  # noqa: E402
from stiv_jax.model.bundle import ModelBundle  # noqa: E402
from trainer_testlib import synthetic_iterator_factory, tiny_config  # noqa: E402

pytestmark = pytest.mark.unoptimized_compile  # a few steps of many programs: compiling dominates


def _config(**overrides):
    return tiny_config(**{"total_steps": 4, "checkpoint_every": 2, "keep_checkpoints": 3, **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real tiny run with committed steps 2 and 4."""
    from stiv_jax import train as train_lib
    config = _config()
    workdir = str(tmp_path_factory.mktemp("run"))
    original = train_lib.make_iterator
    train_lib.make_iterator = synthetic_iterator_factory(config)
    try:
        train_lib.train(config, workdir)
    finally:
        train_lib.make_iterator = original
    assert ckpt.complete_steps(workdir) == [2, 4]
    return workdir


def _copy(trained, tmp_path) -> str:
    workdir = str(tmp_path / "copy")
    shutil.copytree(trained, workdir)
    return workdir


def _data_files(workdir: str, step: int) -> list[str]:
    root = os.path.join(workdir, "checkpoints", str(step), "state")
    return sorted(os.path.join(d, n) for d, _, names in os.walk(root) for n in names if f"{os.sep}d{os.sep}" in
                  os.path.join(d, n))


def _abstract(config):
    from stiv_jax.parallel import mesh as mesh_lib
    from stiv_jax.training import state as state_lib
    from stiv_jax.model.bundle import build_model_bundle
    from stiv_jax.training.optimizer import build_optimizer
    mesh, rules = mesh_lib.build_mesh(config.mesh), mesh_lib.logical_rules(config.mesh)
    bundle = build_model_bundle(config)
    return state_lib.state_shardings(lambda: bundle.init_boxed_params(jax.random.key(0)),
                                     build_optimizer(config.optim), mesh, rules)


def _restore(workdir, config=None):
    abstract, shardings = _abstract(config or _config())
    lines = []
    state = ckpt.restore_newest_intact(workdir, abstract_state=abstract, shardings=shardings, log=lines.append)
    return state, lines


def _overwrite(path: str, offset: int = 0, count: int = 16) -> None:
    with open(path, "r+b") as f:
        f.seek(min(offset, max(os.path.getsize(path) - count, 0)))
        f.write(b"\xff" * count)


def test_every_committed_step_carries_a_manifest_that_verifies(trained):
    for step in (2, 4):
        step_dir = os.path.join(trained, "checkpoints", str(step))
        files = json.load(open(os.path.join(step_dir, integrity.MANIFEST)))["files"]
        assert any(name.startswith("state/") for name in files) and "config/metadata" in files
        assert integrity.verify(step_dir) is None


@pytest.mark.parametrize("damage", ["bytes", "truncate", "delete"])
def test_a_damaged_newest_step_is_named_moved_aside_and_the_older_one_restored(trained, tmp_path, damage):
    workdir = _copy(trained, tmp_path)
    victim = _data_files(workdir, 4)[0]
    if damage == "bytes":
        for path in _data_files(workdir, 4):      # 16 bytes inside every data file, as in the report
            _overwrite(path, offset=os.path.getsize(path) // 2)
    elif damage == "truncate":
        os.truncate(victim, os.path.getsize(victim) // 2)
    else:
        os.remove(victim)
    state, lines = _restore(workdir)
    assert int(state.step) == 2
    assert len(lines) == 2, lines
    assert "checkpoint step 4 is damaged" in lines[0] and os.path.relpath(victim, workdir).split(os.sep)[-1] in lines[0]
    assert {"bytes": "SHA-256 differs", "truncate": "bytes,", "delete": "file missing"}[damage] in lines[0]
    assert "restored checkpoint step 2, the newest intact one" in lines[1]
    # Nothing lost: the damaged step is kept beside the others, the good one untouched.
    assert ckpt.complete_steps(workdir) == [2]
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "4.damaged"))
    assert integrity.verify(os.path.join(workdir, "checkpoints", "2")) is None


def test_damage_without_a_manifest_is_caught_by_the_read_or_the_finite_check(trained, tmp_path):
    workdir = _copy(trained, tmp_path)
    os.remove(os.path.join(workdir, "checkpoints", "4", integrity.MANIFEST))
    for path in _data_files(workdir, 4):
        _overwrite(path, offset=os.path.getsize(path) // 2, count=64)
    state, lines = _restore(workdir)
    assert int(state.step) == 2, lines
    assert any("no integrity manifest" in line for line in lines)
    assert any("checkpoint step 4 is damaged" in line for line in lines)


def test_another_models_checkpoint_is_a_mismatch_naming_the_parameters_not_damage(trained, tmp_path):
    workdir = _copy(trained, tmp_path)
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"another model.*params shape differs: params/dit/"):
        _restore(workdir, _config(**{"model.width": 64}))
    assert ckpt.complete_steps(workdir) == [2, 4]     # a mismatch moves nothing


def test_export_falls_back_past_a_damaged_step_and_refuses_it_when_asked_for(trained, tmp_path):
    from stiv_jax import export as export_lib
    workdir = _copy(trained, tmp_path)
    victim = _data_files(workdir, 4)[-1]
    _overwrite(victim, offset=8)
    lines = []
    summary = export_lib.export(workdir, str(tmp_path / "out"), log=lines.append)
    assert summary["step"] == 2
    assert len(lines) == 1 and os.path.basename(victim) in lines[0] and "falling back" in lines[0]
    with pytest.raises(ckpt.CheckpointDamagedError, match=os.path.basename(victim)):
        export_lib.export(workdir, str(tmp_path / "out4"), step=4)
    assert not os.path.exists(tmp_path / "out4")
    assert ckpt.complete_steps(workdir) == [2, 4]     # export never moves a run's files


def test_reexport_over_a_sharded_export_serves_only_the_new_weights_and_is_byte_deterministic(trained, tmp_path):
    from stiv_jax import export as export_lib
    out = str(tmp_path / "export")
    sharded = export_lib.export(trained, out, step=4, max_shard_bytes=20_000)
    assert len(sharded["files"]) > 1 and os.path.exists(os.path.join(out, export_lib.INDEX))
    single = export_lib.export(trained, out, step=2)
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors"]
    assert not [n for n in os.listdir(tmp_path) if ".staging-" in n or ".old-" in n]
    config, params = exports.load_exported(out)
    ema = ckpt.load_params_from_checkpoint(trained, step=2)
    np.testing.assert_array_equal(params["dit"]["final_proj"]["kernel"], ema["dit"]["final_proj"]["kernel"])
    assert single["step"] == 2
    # The one reader's partial restore (what stage init and export use): only the wanted parameters, placed.
    host = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    part = ckpt.load_params_from_checkpoint(trained, step=2, wanted={"dit/final_proj/kernel": host})
    assert exports.flatten(part).keys() == {"dit/final_proj/kernel"}
    np.testing.assert_array_equal(part["dit"]["final_proj"]["kernel"], ema["dit"]["final_proj"]["kernel"])
    with pytest.raises(ckpt.CheckpointMismatchError, match="dit/final_proj/nope"):
        ckpt.load_params_from_checkpoint(trained, step=2, wanted={"dit/final_proj/nope": host})
    again = str(tmp_path / "again")
    export_lib.export(trained, again, step=2)
    for name in os.listdir(out):
        assert open(os.path.join(out, name), "rb").read() == open(os.path.join(again, name), "rb").read(), name
    # A stale shard (a file of another step) is refused by the loader instead of being served.
    shutil.copy(os.path.join(out, "model.safetensors"), str(tmp_path / "step2.safetensors"))
    export_lib.export(trained, out, step=4)
    shutil.copy(str(tmp_path / "step2.safetensors"), os.path.join(out, "model.safetensors"))
    with pytest.raises(ValueError, match="holds step 2 but .*config.json describes step 4"):
        exports.load_exported(out)


def test_export_and_stage_init_refuse_a_missing_workdir_without_creating_it(tmp_path):
    from stiv_jax import export as export_lib
    from stiv_jax.stages import transition
    missing = str(tmp_path / "no_such_run")
    with pytest.raises(FileNotFoundError, match="--workdir=.*no_such_run.*does not exist"):
        export_lib.export(missing, str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="config.init.sources.t2i=.*does not exist"):
        transition.open_source("t2i", missing)
    assert not os.path.exists(missing) and not os.path.exists(tmp_path / "out")


class _NaNVelocityBundle(ModelBundle):
    def velocity(self, *args, **kwargs):
        return super().velocity(*args, **kwargs) * jnp.nan


def test_resume_past_damage_with_skipped_steps_and_an_early_sigterm_keeps_every_good_step(trained, tmp_path,
                                                                                          monkeypatch, capsys):
    """Step 4 damaged: train resumes from 2 (said once), every update is then non-finite (skipped), and a SIGTERM
    sent during set-up, before the first step, stops the run cleanly after one step without saving over step 2."""
    from stiv_jax import train as train_lib
    from stiv_jax.training import metrics as metrics_lib
    workdir = _copy(trained, tmp_path)
    victim = _data_files(workdir, 4)[0]
    os.truncate(victim, 3)
    config = _config(total_steps=8, keep_checkpoints=1, **{"optim.max_nonfinite_steps": 100})
    original_build = train_lib.build_model_bundle

    def nan_bundle(cfg):
        bundle = original_build(cfg)
        return _NaNVelocityBundle(**{f.name: getattr(bundle, f.name) for f in dataclasses.fields(bundle)})

    make_iterator = synthetic_iterator_factory(config)

    def iterator_then_sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)     # before the first step: the handler is already installed
        return make_iterator(*args, **kwargs)

    monkeypatch.setattr(train_lib, "build_model_bundle", nan_bundle)
    monkeypatch.setattr(train_lib, "make_iterator", iterator_then_sigterm)
    state = train_lib.train(config, workdir)
    out = capsys.readouterr().out
    assert int(state.step) == 3 and int(state.skipped_steps) == 1
    assert f"checkpoint step 4 is damaged: {victim}" in out and "restored checkpoint step 2" in out
    assert "the newest checkpoint is step 2" in out
    assert ckpt.complete_steps(workdir) == [2] and os.path.isdir(os.path.join(workdir, "checkpoints", "4.damaged"))
    lines = open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) for line in lines]
    assert [row["loss"] for row in rows if row["step"] == 3][-1] == "nan"
    step3 = [row for row in metrics_lib.read_metrics(os.path.join(workdir, "metrics.jsonl")) if row["step"] == 3]
    assert np.isnan(step3[0]["loss"])


def test_an_export_with_damaged_weight_bytes_is_refused_by_the_loader(trained, tmp_path):
    from stiv_jax import export as export_lib
    out = str(tmp_path / "export")
    export_lib.export(trained, out, step=4)
    weights = os.path.join(out, "model.safetensors")
    _overwrite(weights, offset=os.path.getsize(weights) - 64)
    with pytest.raises(ValueError, match=r"model.safetensors is damaged: its SHA-256 differs"):
        exports.load_exported(out)
    with pytest.raises(ckpt.CheckpointDamagedError, match="file missing"):   # params-only loading verifies too
        damaged = _copy(trained, tmp_path)
        os.remove(_data_files(damaged, 4)[0])
        ckpt.load_params_from_checkpoint(damaged)
