"""Every stage config at every size matches its checked-in golden dump, so a changed default shows in review.

Regenerate after an intended change:  STIV_UPDATE_GOLDEN=1 python -m pytest tests/experiments -q
"""
import importlib
import json
import os
import re

import pytest

from conftest import REPO_ROOT
from experiments import common
from stiv_jax.model.config import DiTConfig

STAGES = ("t2i_256", "t2i_512", "t2v_256", "t2v_512", "t2v_256_40f", "stiv_256", "stiv_512", "stiv_jit_512",
          "video_prediction", "temporal_upsampler", "multiview", "long_video")
VARIANTS = ("size=XL", "size=XXL", "size=M", "runlocal")
GOLDEN_DIR = os.path.join(REPO_ROOT, "tests", "experiments", "golden")


def load(stage, arg):
    return importlib.import_module(f"experiments.{stage}").get_config(arg)


def golden_name(stage, arg):
    return f"{stage}_{arg.replace('size=', '')}.json"


@pytest.mark.parametrize("stage", STAGES)
def test_config_matches_golden_dump(stage):
    mismatched = []
    for arg in VARIANTS:
        dump = json.dumps(load(stage, arg).to_dict(), indent=1, sort_keys=True) + "\n"
        path = os.path.join(GOLDEN_DIR, golden_name(stage, arg))
        if os.environ.get("STIV_UPDATE_GOLDEN"):
            with open(path, "w") as f:
                f.write(dump)
        with open(path) as f:
            if f.read() != dump:
                mismatched.append(os.path.basename(path))
    assert not mismatched, (f"configs differ from golden dumps {mismatched}; if intended, regenerate with "
                            "STIV_UPDATE_GOLDEN=1 python -m pytest tests/experiments")


def test_every_golden_file_belongs_to_a_config():
    expected = {golden_name(s, a) for s in STAGES for a in VARIANTS}
    assert set(os.listdir(GOLDEN_DIR)) == expected


@pytest.mark.parametrize("stage", STAGES)
def test_model_section_is_a_valid_dit_config_at_paper_sizes(stage):
    for size, (depth, width, heads) in {"XL": (28, 1152, 18), "XXL": (38, 1536, 24), "M": (46, 3072, 48)}.items():
        model = DiTConfig.from_config(load(stage, f"size={size}").model)
        assert (model.depth, model.width, model.num_heads, model.head_dim) == (depth, width, heads, 64)


@pytest.mark.parametrize("stage", STAGES)
def test_docstring_run_commands_name_this_file_and_stage_sources_exist(stage):
    module = importlib.import_module(f"experiments.{stage}")
    commands = re.findall(r"python -m stiv_jax\.(\w+) --config=(\S+?):", module.__doc__)
    assert {c[0] for c in commands} >= {"train", "compile"}
    assert all(path == f"experiments/{stage}.py" for _, path in commands), commands
    config = load(stage, "size=M")
    for name, workdir in config.init.sources.items():
        source_stage = os.path.basename(workdir).rsplit("_M", 1)[0]
        assert source_stage in STAGES and workdir == f"runs/{source_stage}_M", (name, workdir)
        assert any(src == name for _, src in config.init.assign), f"source {name} is never used"


def test_config_argument_typo_names_the_key():
    with pytest.raises(ValueError, match="'sise'"):
        load("t2v_256", "sise=M")
    with pytest.raises(ValueError, match="size='L'"):
        load("t2v_256", "size=L")
    assert load("t2v_256", "size=M,root=gs://b/stiv").init.sources.t2i == "gs://b/stiv/t2i_256_M"
    assert common.parse_arg("runlocal", **common.STAGE_DEFAULTS).size == "tiny"
