"""experiments/base.py holds every key: each experiment config has exactly its keys, the defaults that code keeps
for older saved configs agree with it, and an override of a key that is not there fails naming the key."""
import dataclasses
import importlib
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from experiments import base
from stiv_jax.eval import validation, vbench
from stiv_jax.model.config import DiTConfig
from test_golden_configs import STAGES, load, variants

# Sections whose keys are data (task names, mesh axes, source names), not config keys.
OPEN_SECTIONS = {"diffusion.tasks", "mesh.ici", "mesh.dcn", "init.sources"}
# DiTConfig fields outside config.model: the size fills depth/width/heads, the encoders and finetune.lora the rest.
FILLED_MODEL_FIELDS = {"depth", "width", "num_heads", "latent_channels", "text_dim", "lora_rank", "lora_alpha",
                       "lora_dropout", "lora_targets"}


def keys(config, prefix="") -> set[str]:
    out = set()
    for key, value in config.items():
        name = prefix + key
        if hasattr(value, "items") and name not in OPEN_SECTIONS:
            out |= keys(value, name + ".")
        else:
            out.add(name)
    return out


@pytest.mark.parametrize("name", ("demo", "learning"))
def test_demo_configs_hold_exactly_the_base_keys(name):
    config = importlib.import_module(f"experiments.{name}").get_config()
    assert keys(config) == keys(base.get_config())


@pytest.mark.parametrize("stage", STAGES)
def test_stage_configs_hold_exactly_the_base_keys(stage):
    expected = keys(base.get_config())
    for arg in variants(stage):
        assert keys(load(stage, arg)) == expected, arg


def test_model_section_is_dit_config_at_its_defaults():
    model = base.get_config().model
    fields = {f.name: f.default for f in dataclasses.fields(DiTConfig)}
    assert set(model) == set(fields) - FILLED_MODEL_FIELDS
    assert {k: model[k] for k in model} == {k: fields[k] for k in model}


def test_eval_defaults_kept_for_older_saved_configs_agree_with_the_base():
    config = base.get_config()
    assert config.eval.validation.to_dict() == validation.default_validation_config().to_dict()
    assert config.eval.vbench.to_dict() == vbench.default_vbench_config().to_dict()


def test_an_override_of_a_missing_key_names_it():
    result = subprocess.run([sys.executable, "-m", "stiv_jax.summary", "--config=experiments/demo.py",
                             "--config.data.shardz=x"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "shardz" in result.stderr and '"shards"' in result.stderr
