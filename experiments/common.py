"""Shared builder of the STIV stage configs (``experiments/<stage>.py``); every field carries its comment here.

A stage file calls ``stage_config(arg, ...)`` with what makes the stage (resolution, frames, batch, tasks, where
its weights start from) and gets the full config back. ``arg`` is big_vision style, the part after the ``:`` of
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
    c = ml_collections.ConfigDict()
    c.stage = stage                        # name of this stage (workdir convention: {root}/{stage}_{size})
    c.seed = 0                             # seeds parameters, data order and per-step noise
    c.total_steps = 20 if local else total_steps  # optimizer steps (paper: 400k masked, then 100k/50k unmasked)
    c.checkpoint_every = 10 if local else 5000    # steps between checkpoints (the last step is always saved)
    c.keep_checkpoints = 2 if local else 3        # newest checkpoints kept
    c.log_every = 1 if local else 100             # steps between metric rows
    c.compilation_cache_dir = ""           # persistent XLA cache: "" = WORKDIR/compile_cache, a path/gs://, "none"

    c.model = ml_collections.ConfigDict()  # every key: stiv_jax/model/config.py (DiTConfig)
    c.model.size = args.size               # Tab. 1: XL 28x1152x18, XXL 38x1536x24, M 46x3072x48 (tiny: CPU)
    c.model.mlp_ratio = 4.0                # FFN hidden = 4 d (INFERRED, matches the parameter counts)
    c.model.patch_size = 2                 # spatial patch on the latent grid (INFERRED p = 2)
    c.model.temporal_patch = 1 if frames == 1 else 2  # images: 1; video: 2 (App. B, Fig. 6a)
    c.model.temporal_attention = frames > 1  # T2I has no temporal attention; T2V adds it (zero-init output)
    # T2V grown from T2I: temporal SA enters through a learned zero-initialised gate, so the video model starts
    # as the image model and departs from it smoothly (docs/next_stage.md; the paper does not say)
    c.model.temporal_gate = frames > 1
    c.model.qk_norm = True                 # RMSNorm on queries and keys per head (Tab. 2 "+ QK norm")
    c.model.adaln = "shared"               # one AdaLN for every block (Tab. 2 "+ Shared AdaLN")
    c.model.micro_conditions = True        # resolution, crop, stride, frames in the condition (Tab. 2)
    c.model.rope_theta = 10000.0           # RoPE base (not stated; 1e4 assumed)
    c.model.rope_spatial_scale = rope_spatial_scale    # position multiplier, source grid / this grid (§2.6)
    c.model.rope_temporal_scale = rope_temporal_scale  # the same along time (20 -> 40 frames: 0.5)
    c.model.mask_ratio = 0.5 if masked else 0.0  # MaskDiT spatial token drop (§2.7: 50% in pretraining)
    c.model.decoder_depth = 2              # blocks over all tokens after un-masking (§2.7)
    c.model.scan_layers = not local        # nn.scan over blocks: one compiled body, fast compiles at depth 46
    # Save only the self-attention outputs for the backward pass (§5.1); "full" keeps only block inputs.
    c.model.remat_policy = "none" if local else layout.get("remat_policy", "self_attention")
    # remat_policy=custom: ((tensor name, device | offload | remat), ...), e.g. (("ffn_hidden", "offload"),)
    c.model.remat_custom = ()
    c.model.attention_impl = "xla" if local else "splash"  # Pallas splash attention on TPU
    # Self-attention over tokens sharded on the mesh's context axis: gspmd (XLA gathers keys/values) | ulysses |
    # ring | hybrid (Ulysses in groups of model.context_ulysses_size, ring across them): docs/fit_check.md
    c.model.context_attention = layout.get("context_attention", "gspmd")
    c.model.context_ulysses_size = 2       # hybrid: chips per Ulysses group (divides mesh.ici.context and the heads)
    c.model.ring_zigzag = True             # causal ring/hybrid: zig-zag chunks balance the causal work
    c.model.dtype = "float32" if local else "bfloat16"  # compute dtype (INFERRED bf16 on TPU)
    c.model.param_dtype = "float32"        # master weights stay fp32

    stand_ins = local or bool(args.get("stand_ins", False))
    c.latent = ml_collections.ConfigDict()
    # The paper's frozen per-frame VAE (§2.1: 8 channels, 8x), loaded from a local diffusers AutoencoderKL; a run
    # without latent.path is refused (stiv_jax/encoders/pretrained.py). runlocal and stand_ins: space-to-depth.
    c.latent.kind = "pixels" if stand_ins else "vae"  # vae | pixels (stand-in)
    c.latent.factor = 4 if local else 8    # spatial compression (paper VAE: 8x, INFERRED; checked against the VAE)
    c.latent.path = ""                     # kind=vae: AutoencoderKL directory (config.json + safetensors)
    c.latent.channels = 8                  # kind=vae: latent channels (paper 8; SD-VAE ablation 4); checked
    c.latent.preset = "sd_vae"             # kind=vae: architecture the fit check compiles without the files
    c.latent.frame_chunk = 16              # kind=vae: frames encoded/decoded per VAE call (bounds memory)

    c.text = ml_collections.ConfigDict()
    # The paper's frozen CLIP-bigG text tower (§2.3: 32 layers, 1280 wide) over the T5 tokenizer, both from local
    # directories; runlocal and stand_ins: a trainable byte-embedding encoder.
    c.text.kind = "token_embedding" if stand_ins else "clip"  # clip | t5 | bert | token_embedding (stand-in)
    c.text.path = ""                       # pretrained encoder directory (transformers safetensors checkpoint)
    c.text.preset = "clip_bigg"            # clip: architecture the fit check compiles without the files
    # sentencepiece: T5's spiece.model (the paper's tokenizer); path "" = beside the encoder in text.path
    c.text.tokenizer = ml_collections.ConfigDict(dict(kind="" if stand_ins else "sentencepiece", path=""))
    c.text.dim = 64 if local else 1280     # text embedding width (CLIP-bigG: 1280; checked against the checkpoint)
    c.text.max_length = 32 if local else 77  # tokens per caption (not stated; CLIP's 77 positions)
    c.text.frozen = True                   # pretrained encoders stay frozen, outside the train state

    c.data = ml_collections.ConfigDict()
    c.data.kind = "video"                  # decode clips (latent: precomputed VAE latents + text embeddings)
    c.data.shards = "runs/demo_data" if local else f"{args.root}/data/{'images' if frames == 1 else 'videos'}"
    c.data.batch_size = 8 if local else batch_size  # global batch (divisible by the batch mesh axes)
    c.data.frames = min(frames, 4) if local else frames  # frames per training clip (1 = image stage)
    c.data.frame_stride = 2 if local else frame_stride   # keep 1 of every N source frames (App. B: 3)
    c.data.frame_strides = ()              # ((stride, weight), ...): per-sample strides; () = frame_stride only
    c.data.resolution = 32 if local else resolution      # square crop side in pixels
    c.data.random_crop = True              # random temporal and spatial crop (else center)
    c.data.buckets = ()                    # ((frames, height, width, global_batch[, weight]), ...); () = one
    c.data.num_threads = 2 if local else 16  # grain decode threads per host
    c.data.prefetch = 4                    # batches prefetched per host
    c.data.device_prefetch = 2             # batches put on the devices ahead of the step (2: double buffer)

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.timestep_distribution = "logit_normal"  # not stated for STIV; logit-normal as in DiT-Air / SD3
    c.diffusion.logit_normal_mean = 0.0    # location of logit(t)
    c.diffusion.logit_normal_std = 1.0     # scale of logit(t)
    c.diffusion.timestep_shift = 1.0       # t -> t / (t + s (1 - t)); no shift is stated for STIV
    c.diffusion.shift_reference_positions = 0  # > 0: shift grows with the latent size; 0 = off
    c.diffusion.text_dropout = 0.1         # empty-prompt probability for CFG (§4.2: 10%)
    c.diffusion.image_dropout = 0.0        # dropped given frames (§4.2: 8% for the JIT model, else none)
    c.diffusion.null_image = "noisy"       # a dropped image leaves the noisy frame (trains as T2V), or "zero"
    c.diffusion.tasks = dict(t2v=1.0)      # task -> weight of joint training (stiv_jax/diffusion/tasks.py)
    c.diffusion.predict_frames = 4         # frames given in video prediction (§7: 4)
    c.diffusion.long_keyframe_stride = 20  # clips at this stride or more train long-video key frames (§7: 20)
    c.diffusion.prediction = "velocity"    # the DiT predicts the velocity x1 - eps (§2.9)

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adafactor"             # AdaFactor, factored second moments, chosen for memory (§5.1)
    c.optim.lr = 2e-4                      # constant peak LR (§5.1)
    c.optim.warmup_steps = 2 if local else 1000  # linear warmup (§5.1: 1k steps)
    c.optim.schedule = "constant"          # constant after warmup (§5.1)
    c.optim.decay_steps = c.total_steps    # only read by the cosine schedule
    c.optim.b1 = 0.9                       # first-moment decay (§5.1)
    c.optim.b2 = 0.999                     # second-moment decay (§5.1)
    c.optim.weight_decay = 0.0             # no weight decay (§5.1)
    c.optim.grad_clip = 1.0                # global-norm clip (§5.1)
    c.optim.ema_decay = 0.9 if local else 0.9999  # EMA used for eval and for the next stage's init (App. B)
    c.optim.min_dim_size_to_factor = 128   # AdaFactor: factor the second moment of matrices this big or more
    c.optim.block_rms_clip = 0.0           # AdaFactor update clip by block RMS (0 = off; not stated for STIV)
    c.optim.grad_accum_steps = layout.get("grad_accum_steps", 1)  # micro-batches per step (same global batch)
    c.optim.max_nonfinite_steps = 10       # NaN/Inf updates are skipped; abort after this many in a row
    c.optim.nonfinite_check_lag = 2        # the abort check reads the streak this many steps late (steps in flight)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.ici = dict(MESH_ICI[args.size], context=layout.get("context", 1))  # per-slice axis sizes; -1 fills
    c.mesh.dcn = dict(data=-1)             # across slices (multi-slice TPU): batch over the slices
    c.mesh.rules = layout.get("mesh_rules", "default")  # preset: default | fsdp | fsdp_tensor | fsdp_context
    c.mesh.logical_rules = ()              # explicit (name, axes) pairs override the preset
    c.mesh.dcn_granule = "slice"           # what the dcn axes split over: TPU slices | process (GPU hosts)
    c.mesh.preset = ""                     # named layout over ici/dcn/rules, e.g. gpu_fsdp_hosts (parallel/mesh.py)

    c.sample = ml_collections.ConfigDict()
    c.sample.solver = "euler" if local else "sde"  # euler | heun | sde (DiT-Air: 2nd-order Heun SDE)
    c.sample.num_steps = 4 if local else 50  # sampler steps (DiT-Air: 50)
    c.sample.timestep_shift = 1.0          # grid t -> t / (t + s (1 - t)); none stated for STIV
    c.sample.shift_reference_positions = 0  # > 0: shift *= sqrt(latent frames*h*w / this); 0 = off
    c.sample.sde_noise_scale = 1.0         # g of the SDE diffusion w(t) = g (1 - t)
    c.sample.guidance = "jit"              # JIT-CFG, one text+image null pass (§4.3) | sit | none
    c.sample.cfg_scale = 7.5               # JIT-CFG scale (App. B: 7.5 for T2V and STIV)
    c.sample.cfg_image_scale = 1.5         # image scale of SIT-CFG (only read with guidance='sit')
    c.sample.renorm = True                 # CFG-renormalisation to the conditional norm (App. A)
    c.sample.null_image = "noisy"          # what the unconditional pass sees in given frames: noisy | zero
    c.sample.fps = 8                       # fps of written videos (1 of 3 frames of ~24 fps sources)

    # In-training validation (stiv_jax/eval/validation.py) every sample_every steps, and the VBench harness.
    c.sample_every = 0 if local else 5000  # steps between validations (0: off; runlocal stays fast)
    c.eval = ml_collections.ConfigDict()
    c.eval.validation = ml_collections.ConfigDict()
    c.eval.validation.prompts = (          # fixed T2V prompts, one grid cell each
        "a cyclist rides past a white delivery van in the city", "a big white rabbit stands in a sunny meadow",
        "waves crash on a rocky shore at sunset", "a chef slices vegetables in a busy kitchen")
    c.eval.validation.heldout = "" if local else f"{args.root}/data/heldout"  # held-out clips: TI2V images, FVD
    c.eval.validation.ti2v_samples = 0     # TI2V cells (set_tasks turns them on for stages that train ti2v)
    c.eval.validation.fvd_clips = 0 if local or frames < 9 else 64  # FVD sample count (I3D needs >= 9 frames)
    c.eval.validation.num_steps = 4 if local else 50  # solver steps of validation samples (DiT-Air: 50)
    c.eval.vbench = ml_collections.ConfigDict()
    c.eval.vbench.samples_per_prompt = 5   # VBench standard: 5 videos per prompt
    c.eval.vbench.seed = 0                 # video i of prompt p uses noise seed seed + 5 p + i

    c.health = ml_collections.ConfigDict()  # stiv_jax.training.health, wired in stiv_jax/train.py
    c.health.hang_timeout_s = 1800.0       # no step for this long: dump every thread's stack, exit 42 (0: off)
    c.health.startup_timeout_s = 7200.0    # the same limit before the first step (restore + first compile)

    c.init = ml_collections.ConfigDict()
    c.init.sources = ml_collections.ConfigDict()  # name -> workdir of a finished stage (empty: from scratch)
    c.init.use_ema = True                  # initialise from the sources' EMA weights (App. B)
    c.init.assign = ()                     # (regex over parameter paths, source name | "new"); first match wins
    c.init.inflate_patch_embed = False     # allow temporal_patch 1 -> 2 inflation of the patch embed/output
    if unmasked_finetune:                  # every weight from this stage's MaskDiT run (same shapes and grids)
        c.init.sources.masked = stage_workdir(args, source_stage)
        c.init.assign = ((EVERYTHING, "masked"),)
    return c


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


# --- supervised fine-tuning (SFT) of a finished stage on a small captioned set (STIV_SPEC §5.2, Tab. 4) ---
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
    c.finetune = ml_collections.ConfigDict()
    # Regexes over '/'-joined parameter paths of what trains (stiv_jax/training/finetune.py); () = all, or the
    # LoRA adapters alone when lora.rank > 0.
    c.finetune.trainable = (TEMPORAL,) if args.finetune == "temporal" else ()
    c.finetune.lora = ml_collections.ConfigDict()
    c.finetune.lora.rank = (4 if local else args.rank) if args.finetune == "lora" else 0  # 0: no adapters
    c.finetune.lora.alpha = float(c.finetune.lora.rank)  # update scale alpha / rank = 1
    c.finetune.lora.dropout = 0.0            # dropout on the adapters' inputs (a tiny set may want 0.05-0.1)
    c.finetune.lora.targets = LORA_TARGETS   # every attention and FFN projection of every block
    c.init.sources.base = stage_workdir(args, base)
    # LoRA adapters are new (A random, B = 0: the fine-tune starts exactly at the base); everything else from base.
    c.init.assign = ((r"/lora_[ab]$", "new"), (EVERYTHING, "base"))
    set_tasks(c, **({"t2v": 1.0} if base.startswith("t2v") else {"ti2v": 1.0}))
    return c
