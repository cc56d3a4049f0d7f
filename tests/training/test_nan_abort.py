"""The trainer skips NaN/Inf updates, counts them, and aborts after config.optim.max_nonfinite_steps in a row."""
import dataclasses
import os

import jax.numpy as jnp
import pytest

from stiv_jax.training import metrics as metrics_lib
from stiv_jax.model.bundle import ModelBundle
from trainer_testlib import synthetic_iterator_factory, tiny_config


class _NaNVelocityBundle(ModelBundle):
    def velocity(self, *args, **kwargs):
        return super().velocity(*args, **kwargs) * jnp.nan


@pytest.mark.parametrize("lag", [1, 3])
def test_training_aborts_after_consecutive_nonfinite_steps_without_changing_params(tmp_path, monkeypatch, lag):
    from stiv_jax import train as train_lib
    config = tiny_config(total_steps=20, checkpoint_every=100,
                         **{"optim.max_nonfinite_steps": 3, "optim.nonfinite_check_lag": lag})
    original_build = train_lib.build_model_bundle

    def nan_bundle(cfg):
        bundle = original_build(cfg)
        return _NaNVelocityBundle(**{f.name: getattr(bundle, f.name) for f in dataclasses.fields(bundle)})

    monkeypatch.setattr(train_lib, "build_model_bundle", nan_bundle)
    monkeypatch.setattr(train_lib, "make_iterator", synthetic_iterator_factory(config))
    with pytest.raises(train_lib.NonFiniteLossError, match="max_nonfinite_steps"):
        train_lib.train(config, str(tmp_path))
    rows = metrics_lib.read_metrics(os.path.join(str(tmp_path), "metrics.jsonl"))
    assert [int(r["nonfinite_streak"]) for r in rows[:3]] == [1, 2, 3]
    assert all(int(r["update_skipped"]) == 1 for r in rows)
    # The guard reads step k's streak once step k + lag is dispatched, before logging that step.
    assert len(rows) == 2 + lag
    assert all(r["learning_rate"] == 0.0 for r in rows)  # the optimizer never advanced
