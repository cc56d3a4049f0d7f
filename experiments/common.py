"""Shared builder of the STIV stage configs (``experiments/<stage>.py``) on ``experiments/base.py``.

A stage file calls ``stage_config(arg, ...)`` with what makes the stage (resolution, frames, batch, tasks, where
its weights start from) and gets the full config back: the base config (every key with its comment) with what
the stage decides set over it. ``arg`` is big_vision style, the part after the ``:`` of
``--config=experiments/t2v_256.py:size=M,root=gs://bucket/stiv``:

  size=XL|XXL|M|tiny   model size of Tab. 1 (tiny: 2 blocks, 64 wide, for CPU runs and tests)
  runlocal             a CPU-sized run of the same stage: tiny model, 32x32 pixels, few frames and steps,
                       the demo shards (``make demo`` builds runs/demo_data)
  stand_ins            train on the stand-in encoders (space-to-depth pixels, a trainable byte text encoder) at full
                       size instead of the paper's frozen VAE and CLIP-bigG (whose local paths a run needs:
                       --config.latent.path, --config.text.path, docs/pretrained_checkpoints.md)
  root=DIR             where the stage workdirs live; a stage's source checkpoints are ``{root}/{stage}_{size}``
  unmasked             the stage's unmasked fine-tune (§2.7/5.1): all tokens, from this stage's finished MaskDiT
                       run ``{root}/{stage}_{size}``, 100k steps for video (50k for images), written to
                       ``{root}/{stage}_unmasked_{size}``
  tpu=v5p|v5e          the measured memory layout of the M model at 512x512 video (see M_512_VIDEO_LAYOUTS)

Paper facts: the STIV paper's model sizes, training recipe and applications.
"""
from __future__ import annotations

import ml_collections

from experiments import base

SIZES = ("tiny", "XL", "XXL", "M")  # stiv_jax/model/sizes.py holds their depth, width and heads (Tab. 1)

# Data-parallel layout per size: FSDP over every chip of a slice (batch over data x fsdp, weights over fsdp).
# The M model's parameters, EMA and optimizer moments only fit spread over a slice.
MESH_ICI = {
    "tiny": dict(data=-1, fsdp=1, context=1, tensor=1),
    "XL": dict(data=1, fsdp=-1, context=1, tensor=1),
    "XXL": dict(data=1, fsdp=-1, context=1, tensor=1),
    "M": dict(data=1, fsdp=-1, context=1, tensor=1),
}

# The M model on 512x512 videos (config argument tpu=v5p|v5e), all with the paper's remat (save only the
# self-attention outputs), under which one MaskDiT sample's activations take ~13 GiB per 46-block stack:
#   v5p (95 GiB chips): FSDP, the global batch 1024 as 2 accumulated micro-batches of 4 samples per chip on v5p-256.
#   v5e (16 GiB chips): a chip cannot hold one sample, so each sample's tokens are split over 2 chips (context
#     parallelism, Ulysses all-to-all attention, weights sharded over fsdp x context); 4 x v5e-256 run the batch
#     as 2 micro-batches of 512 samples (1 sample per 2 chips).
# The unmasked fine-tune sees twice the tokens per sample: v5p still fits 2 micro-batches (73 GiB of 95); v5e
# splits each sample over 4 chips in 4 micro-batches, so tokens per chip stay those of the masked stage.
# Measured with stiv_jax.compile (BENCHMARKS.md "## compile"); other sizes and resolutions ignore ``tpu``.
_ULYSSES = dict(mesh_rules="fsdp_context", context_attention="ulysses")
M_512_VIDEO_LAYOUTS = {
    "v5p": {"masked": dict(grad_accum_steps=2), "unmasked": dict(grad_accum_steps=2)},
    "v5e": {"masked": dict(grad_accum_steps=2, context=2, **_ULYSSES),
            "unmasked": dict(grad_accum_steps=4, context=4, **_ULYSSES)},
}
STAGE_DEFAULTS = dict(size="XL", runlocal=False, stand_ins=False, root="runs", unmasked=False, tpu="v5p")
UNMASKED_STEPS = {"image": 50_000, "video": 100_000}  # unmasked fine-tune after MaskDiT (§2.7, §5.1)


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses ``"size=M,runlocal,root=DIR"`` into a ConfigDict; names the key of any unknown or malformed entry."""
    values = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in values:
            raise ValueError(f"config argument {key!r} is not known; valid: {sorted(values)} (got {arg!r})")
        if isinstance(values[key], bool):
            values[key] = value.strip().lower() in ("", "1", "true", "yes") if sep else True
        else:
            if not sep:
                raise ValueError(f"config argument {key!r} needs a value, e.g. {key}={values[key]}")
            values[key] = type(values[key])(value.strip())
    if values.get("runlocal"):
        values["size"] = "tiny"
    if values.get("tpu", "v5p") not in M_512_VIDEO_LAYOUTS:
        raise ValueError(f"tpu={values['tpu']!r} is not known; valid: {sorted(M_512_VIDEO_LAYOUTS)}")
    if values["size"] not in SIZES:
        raise ValueError(f"size={values['size']!r} is not known; valid sizes: {sorted(SIZES)}")
    return ml_collections.ConfigDict(values)


def stage_workdir(args, stage: str) -> str:
    """The workdir convention of a stage run: ``{root}/{stage}_{size}`` (runlocal: ``{root}/local/{stage}``)."""
    if args.runlocal:
        return f"{args.root}/local/{stage}"
    return f"{args.root}/{stage}_{args.size}"


def stage_config(args, *, stage: str, resolution: int, frames: int, batch_size: int, total_steps: int,
                 masked: bool = True, frame_stride: int = 3, rope_spatial_scale: float = 1.0,
                 rope_temporal_scale: float = 1.0) -> ml_collections.ConfigDict:
    """The full config of one stage; the stage file then sets its tasks and its ``init`` sources.

    Args:
      args: the parsed ``get_config`` argument (``parse_arg``).
      stage: the stage name (the workdir and golden-file stem).
      resolution: square training resolution in pixels (256, 512, 320 for multi-view).
      frames: frames per clip (1 for text-to-image).
      batch_size: global batch (paper: 4096 images, 1024 videos).
      total_steps: optimizer steps of the stage (paper default 400k masked).
      masked: MaskDiT 50% spatial masking (pretraining) or all tokens (fine-tuning).
      frame_stride: keep 1 of every ``frame_stride`` source frames (paper: 3).
      rope_spatial_scale, rope_temporal_scale: RoPE interpolation (source tokens / these tokens), checked
        against the source checkpoints by ``stiv_jax.stages.transition``.
    """
    local = args.runlocal
    unmasked_finetune = bool(args.unmasked)
    if unmasked_finetune:
        if not masked:
            raise ValueError(f"config argument 'unmasked': stage {stage!r} already trains on all tokens; drop it")
        source_stage, stage, masked = stage, f"{stage}_unmasked", False
        total_steps = UNMASKED_STEPS["image" if frames == 1 else "video"]
    layout = {}
    if args.size == "M" and resolution >= 512 and frames > 1:
        layout = M_512_VIDEO_LAYOUTS[args.tpu]["masked" if masked else "unmasked"]
    c = base.get_config()                  # every key with its comment: experiments/base.py
    c.stage = stage                        # name of this stage (workdir convention: {root}/{stage}_{size})
    c.total_steps = 20 if local else total_steps  # optimizer steps (paper: 400k masked, then 100k/50k unmasked)
    c.checkpoint_every = 10 if local else 5000    # steps between checkpoints (the last step is always saved)
    c.keep_checkpoints = 2 if local else 3        # newest checkpoints kept
    c.log_every = 1 if local else 100             # steps between metric rows
    _set_model(c, args, frames=frames, masked=masked, layout=layout, rope_spatial_scale=rope_spatial_scale,
               rope_temporal_scale=rope_temporal_scale)
    _set_encoders(c, args)

    c.data.shards = "runs/demo_data" if local else f"{args.root}/data/{'images' if frames == 1 else 'videos'}"
    c.data.batch_size = 8 if local else batch_size  # global batch (divisible by the batch mesh axes)
    c.data.frames = min(frames, 4) if local else frames  # frames per training clip (1 = image stage)
    c.data.frame_stride = 2 if local else frame_stride   # keep 1 of every N source frames (App. B: 3)
    c.data.resolution = 32 if local else resolution      # square crop side in pixels
    c.data.num_threads = 2 if local else 16  # grain decode threads per host

    c.optim.warmup_steps = 2 if local else 1000  # linear warmup (§5.1: 1k steps)
    c.optim.decay_steps = c.total_steps    # only read by the cosine schedule
    c.optim.ema_decay = 0.9 if local else 0.9999  # EMA used for eval and for the next stage's init (App. B)
    c.optim.block_rms_clip = 0.0           # AdaFactor update clip by block RMS: off (not stated for STIV)
    c.optim.grad_accum_steps = layout.get("grad_accum_steps", 1)  # micro-batches per step (same global batch)

    c.mesh.ici = dict(MESH_ICI[args.size], context=layout.get("context", 1))  # per-slice axis sizes; -1 fills
    c.mesh.rules = layout.get("mesh_rules", "default")  # preset: default | fsdp | fsdp_tensor | fsdp_context

    c.sample.solver = "euler" if local else "sde"  # euler | heun | sde (DiT-Air: 2nd-order Heun SDE)
    c.sample.num_steps = 4 if local else 50  # sampler steps (DiT-Air: 50)

    # In-training validation (stiv_jax/eval/validation.py) every sample_every steps, and the VBench harness.
    c.sample_every = 0 if local else 5000  # steps between validations (0: off; runlocal stays fast)
    c.eval.validation.prompts = (          # fixed T2V prompts, one grid cell each
        "a cyclist rides past a white delivery van in the city", "a big white rabbit stands in a sunny meadow",
        "waves crash on a rocky shore at sunset", "a chef slices vegetables in a busy kitchen")
    c.eval.validation.heldout = "" if local else f"{args.root}/data/heldout"  # held-out clips: TI2V images, FVD
    c.eval.validation.ti2v_samples = 0     # TI2V cells (set_tasks turns them on for stages that train ti2v)
    c.eval.validation.fvd_clips = 0 if local or frames < 9 else 64  # FVD sample count (I3D needs >= 9 frames)
    c.eval.validation.num_steps = 4 if local else 50  # solver steps of validation samples (DiT-Air: 50)

    if unmasked_finetune:                  # every weight from this stage's MaskDiT run (same shapes and grids)
        c.init.sources.masked = stage_workdir(args, source_stage)
        c.init.assign = ((EVERYTHING, "masked"),)
    return c


def _set_model(c, args, *, frames: int, masked: bool, layout: dict, rope_spatial_scale: float,
               rope_temporal_scale: float) -> None:
    """The stage's ``config.model``: size, temporal layers, MaskDiT, RoPE scales and the TPU layout."""
    local = args.runlocal
    c.model.size = args.size               # Tab. 1: XL 28x1152x18, XXL 38x1536x24, M 46x3072x48 (tiny: CPU)
    c.model.temporal_patch = 1 if frames == 1 else 2  # images: 1; video: 2 (App. B, Fig. 6a)
    c.model.temporal_attention = frames > 1  # T2I has no temporal attention; T2V adds it (zero-init output)
    # T2V grown from T2I: temporal SA enters through a learned zero-initialised gate, so the video model starts
    # as the image model and departs from it smoothly (docs/next_stage.md; the paper does not say)
    c.model.temporal_gate = frames > 1
    c.model.rope_spatial_scale = rope_spatial_scale    # position multiplier, source grid / this grid (§2.6)
    c.model.rope_temporal_scale = rope_temporal_scale  # the same along time (20 -> 40 frames: 0.5)
    c.model.mask_ratio = 0.5 if masked else 0.0  # MaskDiT spatial token drop (§2.7: 50% in pretraining)
    c.model.scan_layers = not local        # nn.scan over blocks: one compiled body, fast compiles at depth 46
    # Save only the self-attention outputs for the backward pass (§5.1); "full" keeps only block inputs.
    c.model.remat_policy = "none" if local else layout.get("remat_policy", "self_attention")
    c.model.attention_impl = "xla" if local else "splash"  # Pallas splash attention on TPU
    c.model.context_attention = layout.get("context_attention", "gspmd")  # v5e M-512: Ulysses (docs/fit_check.md)
    c.model.dtype = "float32" if local else "bfloat16"  # compute dtype (INFERRED bf16 on TPU)


def _set_encoders(c, args) -> None:
    """The paper's frozen VAE and CLIP-bigG (local paths: docs/pretrained_checkpoints.md), or the stand-ins."""
    local = args.runlocal
    stand_ins = local or bool(args.get("stand_ins", False))
    # The paper's frozen per-frame VAE (§2.1: 8 channels, 8x), loaded from a local diffusers AutoencoderKL; a run
    # without latent.path is refused (stiv_jax/encoders/pretrained.py). runlocal and stand_ins: space-to-depth.
    c.latent.kind = "pixels" if stand_ins else "vae"  # vae | pixels (stand-in)
    c.latent.factor = 4 if local else 8    # spatial compression (paper VAE: 8x, INFERRED; checked against the VAE)
    c.latent.channels = 8                  # kind=vae: latent channels (paper 8; SD-VAE ablation 4); checked
    c.latent.preset = "sd_vae"             # kind=vae: architecture the fit check compiles without the files
    # The paper's frozen CLIP-bigG text tower (§2.3: 32 layers, 1280 wide) over the T5 tokenizer, both from local
    # directories; runlocal and stand_ins: a trainable byte-embedding encoder.
    c.text.kind = "token_embedding" if stand_ins else "clip"  # clip | t5 | bert | token_embedding (stand-in)
    c.text.preset = "clip_bigg"            # clip: architecture the fit check compiles without the files
    # sentencepiece: T5's spiece.model (the paper's tokenizer); path "" = beside the encoder in text.path
    c.text.tokenizer.kind = "" if stand_ins else "sentencepiece"
    c.text.dim = 64 if local else 1280     # text embedding width (CLIP-bigG: 1280; checked against the checkpoint)
    c.text.max_length = 32 if local else 77  # tokens per caption (not stated; CLIP's 77 positions)


def from_stage(args, config, stages: dict[str, str], assign: tuple[tuple[str, str], ...], *,
               inflate_patch_embed: bool = False) -> None:
    """Points ``config.init`` at finished stages: ``stages`` maps a source name to the stage it comes from.

    An unmasked fine-tune (``unmasked``) keeps the init ``stage_config`` gave it: its own stage's MaskDiT run.
    """
    if args.unmasked:
        return
    for name, stage in stages.items():
        config.init.sources[name] = stage_workdir(args, stage)
    config.init.assign = tuple(assign)
    config.init.inflate_patch_embed = inflate_patch_embed


# Parameter-path patterns of the stage transitions (paths are '/'-joined, e.g. 'dit/block_3/temporal_attn/out/kernel').
TEMPORAL = r"(^|/)temporal_(attn/|gate$)"  # temporal SA and its gate
EVERYTHING = r".*"


def set_tasks(config, **weights: float) -> None:
    """The stage's conditioning tasks and their sampling weights (``t2v``, ``ti2v``, ``predict`` ...)."""
    config.diffusion.tasks = dict(weights)
    if weights.get("ti2v", 0) > 0 and config.eval.validation.heldout:
        config.eval.validation.ti2v_samples = 4   # validation shows TI2V from held-out first frames too


def interpolation(args, source: float, target: float) -> float:
    """RoPE scale ``source / target`` (resolution or frames); 1 for runlocal, whose stages share one tiny grid."""
    return 1.0 if args.runlocal else source / target


# --- supervised fine-tuning (SFT) of a finished stage on a small captioned set (STIV paper, Sec. 5.2, Tab. 4) ---
# The paper fine-tunes its pretrained T2V-M-512 on 20k filtered Panda-70M videos, masked ("SFT") or on all tokens
# ("UnmaskSFT"); steps, batch and LR are not stated. Every choice below is ours and commented.
SFT_DEFAULTS = dict(STAGE_DEFAULTS, finetune="lora", base="", data="", rank=64)
FINETUNE_MODES = ("full", "lora", "temporal")  # every weight | LoRA adapters only | temporal attention only
LORA_TARGETS = r"(spatial_attn|temporal_attn|cross_attn|full_attn)/(query|key|value|out)$|ffn/(wi|wo)$"


def sft_config(arg, *, stage: str, resolution: int, base: str, rope_spatial_scale: float = 1.0):
    """The SFT stage ``stage`` from the finished stage ``base`` (``base=`` in ``arg`` overrides it).

    ``arg`` adds to the stage keys: ``finetune=lora|full|temporal``, ``data=DIR`` (the user's shards, the shard
    builder's output; default ``{root}/data/sft``), ``rank=N`` (LoRA rank), ``base=STAGE``.
    """
    args = parse_arg(arg, **SFT_DEFAULTS)
    if args.finetune not in FINETUNE_MODES:
        raise ValueError(f"finetune={args.finetune!r} is not known; valid: {FINETUNE_MODES}")
    base = args.base or base
    # UnmaskSFT (all tokens): a small set needs no MaskDiT speed-up and it scored the best Semantic (Tab. 4: 79.5
    # vs 78.3); the masked "SFT" variant is --config.model.mask_ratio=0.5. 20 frames as the base stages.
    c = stage_config(args, stage=stage, resolution=resolution, frames=20, batch_size=256, total_steps=10_000,
                     masked=False, rope_spatial_scale=rope_spatial_scale)
    local = args.runlocal
    c.data.shards = "runs/demo_data" if local else (args.data or f"{args.root}/data/sft")  # the user's clips
    c.checkpoint_every = 10 if local else 1000  # a short run: checkpoint often
    c.optim.warmup_steps = 2 if local else 200  # short warmup (pretraining: 1k)
    # LR: LoRA adapters start at zero and take a larger step; full / partial fine-tunes use 1/10 of pretraining.
    c.optim.lr = 1e-4 if args.finetune == "lora" else 2e-5
    c.optim.ema_decay = 0.9 if local else 0.999  # 10k steps: 0.9999 would barely leave the base
    c.sample_every = 0 if local else 1000       # watch a small-set fine-tune for over-fitting
    # What trains (stiv_jax/training/finetune.py): the temporal attention alone, or all / the LoRA adapters alone.
    c.finetune.trainable = (TEMPORAL,) if args.finetune == "temporal" else ()
    c.finetune.lora.rank = (4 if local else args.rank) if args.finetune == "lora" else 0  # 0: no adapters
    c.finetune.lora.alpha = float(c.finetune.lora.rank)  # update scale alpha / rank = 1
    c.finetune.lora.dropout = 0.0            # dropout on the adapters' inputs (a tiny set may want 0.05-0.1)
    c.finetune.lora.targets = LORA_TARGETS   # every attention and FFN projection of every block
    c.init.sources.base = stage_workdir(args, base)
    # LoRA adapters are new (A random, B = 0: the fine-tune starts exactly at the base); everything else from base.
    c.init.assign = ((r"/lora_[ab]$", "new"), (EVERYTHING, "base"))
    set_tasks(c, **({"t2v": 1.0} if base.startswith("t2v") else {"ti2v": 1.0}))
    return c
