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
          "video_prediction", "temporal_upsampler", "multiview", "long_video", "sft_256", "sft_512")
VARIANTS = ("size=XL", "size=XXL", "size=M", "runlocal")
UNMASKED = "size=M,unmasked"   # the unmasked fine-tune of every MaskDiT stage (multiview trains unmasked)
MASKED_STAGES = tuple(s for s in STAGES if s != "multiview" and not s.startswith("sft"))
GOLDEN_DIR = os.path.join(REPO_ROOT, "tests", "experiments", "golden")


def load(stage, arg):
    return importlib.import_module(f"experiments.{stage}").get_config(arg)


def golden_name(stage, arg):
    return f"{stage}_{arg.replace('size=', '').replace('tpu=', '').replace(',', '_')}.json"


def variants(stage):
    v5e = ("size=M,tpu=v5e",) if stage in ("t2v_512", "stiv_512", "stiv_jit_512", "sft_512") else ()
    return VARIANTS + ((UNMASKED,) if stage in MASKED_STAGES else ()) + v5e


@pytest.mark.parametrize("stage", STAGES)
def test_config_matches_golden_dump(stage):
    mismatched = []
    for arg in variants(stage):
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
    expected = {golden_name(s, a) for s in STAGES for a in variants(s)}
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


@pytest.mark.parametrize("stage", MASKED_STAGES)
def test_unmasked_finetune_continues_the_stage_on_all_tokens(stage):
    """§2.7/5.1: MaskDiT pretraining, then an unmasked fine-tune of 50k (T2I) or 100k (T2V/TI2V) steps."""
    masked, unmasked = load(stage, "size=M"), load(stage, UNMASKED)
    assert masked.model.mask_ratio == 0.5 and unmasked.model.mask_ratio == 0.0
    assert unmasked.total_steps == (50_000 if masked.data.frames == 1 else 100_000)
    assert unmasked.stage == f"{stage}_unmasked"
    assert dict(unmasked.init.sources) == {"masked": f"runs/{stage}_M"}
    assert tuple(unmasked.init.assign) == ((common.EVERYTHING, "masked"),)
    # Same model and grid as the masked run, so every parameter loads as is (RoPE scales unchanged).
    for key in ("size", "decoder_depth", "temporal_patch", "rope_spatial_scale", "rope_temporal_scale"):
        assert unmasked.model[key] == masked.model[key], key
    assert unmasked.diffusion.tasks == masked.diffusion.tasks


def test_unmasked_is_refused_where_the_stage_has_no_masking():
    with pytest.raises(ValueError, match="'multiview' already trains on all tokens"):
        load("multiview", UNMASKED)


def test_paper_optimizer_and_the_measured_m512_layout():
    """AdaFactor without weight decay (§5.1); the M-512 video stages use the layout measured to fit (BENCHMARKS)."""
    for stage in STAGES:
        optim = load(stage, "size=XL").optim
        assert (optim.name, optim.b1, optim.weight_decay, optim.grad_clip) == ("adafactor", 0.9, 0.0, 1.0)
    for stage in ("t2v_512", "stiv_512", "stiv_jit_512"):
        v5p, v5e = load(stage, "size=M"), load(stage, "size=M,tpu=v5e")
        for config in (v5p, v5e):   # both: the paper's batch, MaskDiT and remat, as 2 micro-batches
            assert config.data.batch_size == 1024 and config.model.mask_ratio == 0.5
            assert (config.model.remat_policy, config.optim.grad_accum_steps) == ("self_attention", 2)
            assert config.mesh.ici.fsdp == -1
        assert (v5p.mesh.rules, v5p.mesh.ici.context, v5p.model.context_attention) == ("default", 1, "gspmd")
        assert (v5e.mesh.rules, v5e.mesh.ici.context, v5e.model.context_attention) == ("fsdp_context", 2, "ulysses")
        # The unmasked fine-tune doubles the tokens: v5e splits each sample over twice the chips, in 4 micro-batches.
        v5p_full, v5e_full = load(stage, "size=M,unmasked"), load(stage, "size=M,tpu=v5e,unmasked")
        assert (v5p_full.model.mask_ratio, v5p_full.optim.grad_accum_steps, v5p_full.mesh.ici.context) == (0.0, 2, 1)
        assert (v5e_full.optim.grad_accum_steps, v5e_full.mesh.ici.context) == (4, 4)
        xl = load(stage, "size=XL,tpu=v5e")   # other sizes keep the paper's remat and one micro-batch
        assert (xl.model.remat_policy, xl.optim.grad_accum_steps) == ("self_attention", 1)
    with pytest.raises(ValueError, match="tpu='v4' is not known"):
        load("t2v_512", "size=M,tpu=v4")


@pytest.mark.parametrize("stage", STAGES)
def test_sample_section_builds_the_sampler(stage):
    """`stiv_jax.sample` (and an export of the run) reads its solver and guidance from config.sample."""
    from stiv_jax.diffusion.guidance import Guidance
    from stiv_jax.sampling.generate import SolverSettings
    for arg in ("size=M", "runlocal"):
        config = load(stage, arg)
        guidance = Guidance.from_config(config.sample)
        solver = SolverSettings.from_config(config.sample, (config.data.frames, 8, 8, 4))
        assert guidance.mode == "jit" and guidance.renorm and solver.num_steps == config.sample.num_steps
        assert guidance.null_image == ("zero" if stage == "multiview" else "noisy")


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("size", ("XL", "M"))
def test_every_stage_passes_its_own_rope_check_against_its_source_stages(stage, size):
    """The transition's RoPE check (positions keep the range each source trained on) holds for the full-size
    configs as shipped, with the attention of each kind taken from the source ``init.assign`` names for it."""
    from stiv_jax.stages import surgery, transition
    config = load(stage, f"size={size}")
    sources, params = {}, []
    for name, workdir in config.init.sources.items():
        source_stage = os.path.basename(workdir).rsplit(f"_{size}", 1)[0]
        sources[name] = transition.SourceCheckpoint(name=name, workdir=workdir, step=0, subtree="ema_params",
                                                    config=load(source_stage, f"size={size}"), shapes={})
    for kind in ("spatial_attn", "temporal_attn"):
        path = f"dit/block_0/{kind}/query/kernel"
        source = next((src for pattern, src in config.init.assign if re.search(pattern, path)), surgery.NEW)
        params.append(surgery.ParamPlan(path=path, source=source, action="load", target_shape=(1,)))
    plan = surgery.TransitionPlan(params=params, dropped={}, sources={})
    transition.check_rope_scales(config, sources, plan)   # raises TransitionError naming the scale on a mismatch
