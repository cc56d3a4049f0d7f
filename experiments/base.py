"""The base config: every key a run's config holds, each with its comment; every experiment overrides it.

``experiments/common.py`` (the paper's stage configs) and ``experiments/demo.py`` start from ``get_config()`` and
set only what they decide; code reads ``config.<section>.<key>`` and a key missing here is an error. A value here
is what the code used when a config did not set the key (so such a config runs as before); keys that every
experiment sets carry the paper's value. Each entry point loads configs with ``lock_config=True``, so an override
of a key that is not here (``--config.data.shardz=...``) fails naming it.

Two kinds of key stay outside: ``model.depth``/``width``/``num_heads`` (``model.size`` fills them,
stiv_jax/model/sizes.py) and the model fields the encoders and ``finetune.lora`` fill (``latent_channels``,
``text_dim``, ``lora_*``; stiv_jax/model/bundle.py).
"""
import ml_collections
from ml_collections.config_dict import placeholder


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = ""                           # name of the stage (workdir convention {root}/{stage}_{size}; "": none)
    c.seed = 0                             # seeds parameters, data order and per-step noise
    c.total_steps = 400_000                # optimizer steps (paper: 400k masked, then 100k/50k unmasked)
    c.checkpoint_every = 5000              # steps between checkpoints (the last step is always saved)
    c.keep_checkpoints = 3                 # newest checkpoints kept
    c.keep_checkpoint_period = placeholder(int)  # also keep every checkpoint at a multiple of this (None/0: none)
    c.profile_steps = ()                   # (start, stop): write a profiler trace of these steps to workdir/profile
    c.sample_every = 0                     # steps between validations (config.eval.validation; 0: off)
    c.peak_tflops_per_device = placeholder(float)  # for MFU when the device kind is unknown (None/0: device_kind)
    c.log_every = 100                      # steps between metric rows
    c.console_metrics = True               # also print each metric row on the lead host's console
    c.compilation_cache_dir = ""           # persistent XLA cache: "" = WORKDIR/compile_cache, a path/gs://, "none"
    c.model = _model()
    c.latent = _latent()
    c.text = _text()
    c.data = _data()
    c.diffusion = _diffusion()
    c.optim = _optim()
    c.mesh = _mesh()
    c.sample = _sample()
    c.eval = ml_collections.ConfigDict()
    c.eval.validation = _validation()
    c.eval.vbench = _vbench()
    c.health = ml_collections.ConfigDict()  # stiv_jax.training.health, wired in stiv_jax/train.py
    c.health.hang_timeout_s = 1800.0       # no step for this long: dump every thread's stack, exit 42 (0: off)
    c.health.startup_timeout_s = 7200.0    # the same limit before the first step (restore + first compile)
    c.init = _init()
    c.finetune = _finetune()
    return c


def _model() -> ml_collections.ConfigDict:
    """``config.model``: the fields of stiv_jax/model/config.py (DiTConfig), at DiTConfig's defaults."""
    m = ml_collections.ConfigDict()
    m.size = ""                            # Tab. 1: XL 28x1152x18, XXL 38x1536x24, M 46x3072x48 (tiny, small: CPU)
    m.mlp_ratio = 4.0                      # FFN hidden = mlp_ratio x width, GELU (INFERRED 4)
    m.patch_size = 2                       # spatial patch on the latent grid (INFERRED p = 2)
    m.temporal_patch = 1                   # latent frames per temporal token: 1 (T2I, Fig. 6a), 2 (paper video), 4
    m.attention_layout = "factorized"      # factorized: spatial SA -> temporal SA; full3d: one SA over T*H*W
    m.temporal_attention = True            # False: the T2I model (no temporal SA parameters)
    m.causal_temporal = False              # causal temporal attention (Fig. 6a: worse, 74.30 vs 78.25)
    m.qk_norm = True                       # RMSNorm on self-attention queries and keys per head (Tab. 2)
    m.cross_attn_qk_norm = True            # the same on cross-attention
    m.sandwich_norm = True                 # stateless LN after each sub-layer as well as before
    m.condition_norm = True                # stateless LN on each singleton embedding before the sum (Tab. 2)
    m.adaln = "shared"                     # shared (Tab. 2 "+ Shared AdaLN") | shared_offsets | per_block
    m.temporal_adaln = False               # shift/scale/gate on temporal SA too (Fig. 6a: slightly worse)
    m.adaln_zero = True                    # zero-init the AdaLN linears so every gate starts at 0
    m.zero_init_temporal_out = True        # zero-init temporal SA's output projection: T2V == T2I at step 0
    m.temporal_gate = False                # learned zero-init gate on temporal SA's output (docs/next_stage.md)
    m.micro_conditions = True              # resolution, crop, frame stride, frame count in the condition (Tab. 2)
    m.frequency_dim = 256                  # sinusoid width of the timestep and micro-condition embeddings
    m.timestep_scale = 1000.0              # t in [0, 1] is multiplied by this before the sinusoid
    m.rope_theta = 10000.0                 # RoPE base (not stated; 1e4 assumed)
    m.rope_spatial_scale = 1.0             # position multiplier, source grid / this grid (§2.6)
    m.rope_temporal_scale = 1.0            # the same along time (20 -> 40 frames: 0.5)
    m.mask_ratio = 0.0                     # MaskDiT spatial token drop in training (§2.7: 0.5 in pretraining)
    m.decoder_depth = 2                    # MaskDiT blocks over all tokens after un-masking (§2.7: 2)
    m.scan_layers = False                  # nn.scan over blocks: one compiled body, fast compiles at depth 46
    # Saved for the backward pass: none | full | dots | self_attention (§5.1) | offload_self_attention | custom
    m.remat_policy = "none"
    # remat_policy=custom: ((tensor name, device | offload | remat), ...), e.g. (("ffn_hidden", "offload"),)
    m.remat_custom = ()
    m.attention_impl = "xla"               # xla (einsum) | dot_product (jax.nn, cuDNN on GPU) | splash (TPU Pallas)
    # Self-attention over tokens sharded on the mesh's context axis: gspmd (XLA gathers keys/values) | ulysses |
    # ring | hybrid (Ulysses in groups of model.context_ulysses_size, ring across them): docs/fit_check.md
    m.context_attention = "gspmd"
    m.context_ulysses_size = 2             # hybrid: chips per Ulysses group (divides mesh.ici.context and the heads)
    m.ring_zigzag = True                   # causal ring/hybrid: zig-zag chunks balance the causal work
    m.splash_block_q = 512                 # splash attention query block (sequence lengths must be multiples)
    m.splash_block_kv = 512                # splash attention key/value block
    m.splash_block_kv_compute = 512        # splash attention key/value compute block
    m.splash_interpret = False             # run the splash kernel in Pallas interpret mode (CPU testing only)
    m.norm_eps = 1e-6                      # stateless LayerNorm / RMSNorm epsilon (computed in float32)
    m.dtype = "float32"                    # compute dtype of matmuls (INFERRED bf16 on TPU)
    m.param_dtype = "float32"              # master weights stay fp32
    return m


def _latent() -> ml_collections.ConfigDict:
    """``config.latent``: the frozen per-frame VAE (§2.1) or the space-to-depth stand-in."""
    s = ml_collections.ConfigDict()
    # vae: the paper's frozen VAE from a local diffusers AutoencoderKL (a run without latent.path is refused,
    # stiv_jax/encoders/pretrained.py) | pixels: lossless space-to-depth (stand-in, CPU runs)
    s.kind = "vae"
    s.factor = 8                           # spatial compression (paper VAE: 8x, INFERRED; checked against the VAE)
    s.path = ""                            # kind=vae: AutoencoderKL directory (config.json + safetensors)
    s.channels = 0                         # kind=vae: latent channels, checked (paper 8; 0: whatever the VAE has)
    s.preset = ""                          # kind=vae: architecture the fit check compiles without the files
    s.frame_chunk = 16                     # kind=vae: frames encoded/decoded per VAE call (bounds memory)
    return s


def _text() -> ml_collections.ConfigDict:
    """``config.text``: the frozen text encoder (§2.3: CLIP-bigG over the T5 tokenizer) or the stand-in."""
    s = ml_collections.ConfigDict()
    s.kind = "clip"                        # clip | t5 | bert | token_embedding (trainable byte stand-in)
    s.path = ""                            # pretrained encoder directory (transformers safetensors checkpoint)
    s.preset = ""                          # clip: architecture the fit check compiles without the files
    # kind: sentencepiece (T5's spiece.model, the paper's tokenizer) | "" (the encoder's own); path "" = beside
    # the encoder in text.path
    s.tokenizer = ml_collections.ConfigDict(dict(kind="", path=""))
    s.hidden_layer = placeholder(int)      # clip: None = the final-layer-norm sequence; an int (-2) that layer's
    s.dim = 1280                           # text embedding width (CLIP-bigG: 1280; checked against the checkpoint)
    s.max_length = 77                      # tokens per caption (not stated; CLIP's 77 positions)
    s.frozen = True                        # pretrained encoders stay frozen, outside the train state
    return s


def _data() -> ml_collections.ConfigDict:
    """``config.data``: the grain pipeline over ArrayRecord shards (stiv_jax/data/pipeline.py)."""
    d = ml_collections.ConfigDict()
    d.kind = "video"                       # video: decode clips; latent: precomputed VAE latents + text embeddings
    d.shards = ""                          # directory or glob of ArrayRecord clip shards, or "tfds:NAME@DATA_DIR"
    d.shard_weights = ()                   # ((pattern, weight), ...): sources mixed batch by batch (shards = "")
    d.batch_size = 1024                    # global batch (paper: 4096 images, 1024 videos; divisible by the hosts)
    d.frames = 20                          # frames per training clip (1 = image stage)
    d.frame_stride = 3                     # keep 1 of every N source frames (App. B: 3)
    d.frame_strides = ()                   # ((stride, weight), ...): per-sample strides; () = frame_stride only
    d.resolution = 256                     # square crop side in pixels
    d.random_crop = True                   # random temporal and spatial crop (else center)
    d.buckets = ()                         # ((frames, height, width, global_batch[, weight]), ...); () = one
    d.image_shards = ""                    # image records for T2I / joint image-video training ("" = none)
    d.image_weight = 0.0                   # fraction of batches drawn from images
    d.image_batch_size = 0                 # global image batch (0: batch_size)
    d.image_buckets = ()                   # ((1, height, width, global_batch[, weight]), ...); () = one square
    d.num_workers = 0                      # grain worker processes (0: decode in threads of this process)
    d.num_threads = 2                      # grain read/decode threads (per worker)
    d.prefetch = 4                         # elements prefetched per thread / batches per worker
    d.device_prefetch = 2                  # batches put on the devices ahead of the step (2: double buffer)
    d.on_host_count_change = "refuse"      # or "restart": fresh data order when resuming on other hosts
    d.on_damaged_shard = "refuse"          # or "skip": leave out (count, report) truncated shards / bad records
    return d


def _diffusion() -> ml_collections.ConfigDict:
    """``config.diffusion``: flow matching, its timesteps, dropouts and the joint tasks."""
    d = ml_collections.ConfigDict()
    d.timestep_distribution = "logit_normal"  # or uniform; not stated for STIV, logit-normal as DiT-Air / SD3
    d.logit_normal_mean = 0.0              # location of logit(t) (> 0 favours data)
    d.logit_normal_std = 1.0               # scale of logit(t)
    d.timestep_shift = 1.0                 # t -> t / (t + s (1 - t)); > 1 trains more near noise (none stated)
    d.shift_reference_positions = 0        # > 0: shift *= sqrt(latent frames*h*w / this); 0 = off
    d.text_dropout = 0.1                   # empty-prompt probability for CFG (§4.2: 10%)
    d.image_dropout = 0.0                  # dropped given frames (§4.2: 8% for the JIT model, else none)
    d.null_image = "noisy"                 # a dropped image leaves the noisy frame (trains as T2V), or "zero"
    d.tasks = dict(t2v=1.0)                # task -> weight of joint training (stiv_jax/diffusion/tasks.py)
    d.predict_frames = 4                   # frames given in video prediction (§7: 4)
    d.long_keyframe_stride = 20            # clips at this stride or more train long-video key frames (§7: 20)
    d.prediction = "velocity"              # the DiT predicts the velocity x1 - eps (§2.9) | data (JiT)
    d.min_time_gap = 0.05                  # prediction=data: velocity = (x1_hat - x_t) / max(1 - t, min_time_gap)
    return d


def _optim() -> ml_collections.ConfigDict:
    """``config.optim``: the optimizer, its schedule, EMA and the non-finite-step guard."""
    o = ml_collections.ConfigDict()
    o.name = "adafactor"                   # AdaFactor, factored second moments, chosen for memory (§5.1) | adamw
    o.lr = 2e-4                            # constant peak LR (§5.1)
    o.warmup_steps = 1000                  # linear warmup (§5.1: 1k steps)
    o.schedule = "constant"                # constant after warmup (§5.1) | cosine
    o.decay_steps = 400_000                # cosine decay length (only read by the cosine schedule)
    o.b1 = 0.9                             # first-moment decay (§5.1)
    o.b2 = 0.999                           # second-moment decay (§5.1)
    o.weight_decay = 0.0                   # no weight decay (§5.1)
    o.grad_clip = 1.0                      # global-norm clip (§5.1)
    o.ema_decay = 0.9999                   # EMA used for eval and for the next stage's init (App. B)
    o.min_dim_size_to_factor = 128         # AdaFactor: factor the second moment of matrices this big or more
    o.block_rms_clip = placeholder(float)  # AdaFactor update clip by block RMS (None/0: off; not stated for STIV)
    o.grad_accum_steps = 1                 # micro-batches per optimizer step (same global batch)
    o.max_nonfinite_steps = 10             # NaN/Inf updates are skipped; abort after this many in a row
    o.nonfinite_check_lag = 2              # the abort check reads the streak this many steps late (steps in flight)
    return o


def _mesh() -> ml_collections.ConfigDict:
    """``config.mesh``: the device mesh and the logical-axis rules (stiv_jax/parallel/mesh.py)."""
    m = ml_collections.ConfigDict()
    m.ici = dict(data=-1, fsdp=1, context=1, tensor=1)  # per-slice axis sizes; -1 fills with the remaining devices
    m.dcn = dict(data=-1)                  # across slices (multi-slice TPU): batch over the slices
    m.rules = "default"                    # preset: default | fsdp | fsdp_tensor | fsdp_context
    m.logical_rules = ()                   # explicit (name, axes) pairs override the preset
    m.dcn_granule = "slice"                # what the dcn axes split over: TPU slices | process (GPU hosts)
    m.preset = ""                          # named layout over ici/dcn/rules, e.g. gpu_fsdp_hosts (parallel/mesh.py)
    m.min_sharded_fraction = 0.98          # with fsdp > 1, this share of parameter bytes must be sharded
    m.debug_sharding = False               # print every parameter's and activation's logical/physical sharding
    return m


def _sample() -> ml_collections.ConfigDict:
    """``config.sample``: the solver and guidance of sampling (validation, VBench, stiv_jax.sample)."""
    s = ml_collections.ConfigDict()
    s.solver = "sde"                       # euler | heun (2nd order) | sde (DiT-Air: 2nd-order Heun SDE)
    s.num_steps = 50                       # solver steps (DiT-Air: 50)
    s.timestep_shift = 1.0                 # grid t -> t / (t + s (1 - t)); none stated for STIV
    s.shift_reference_positions = 0        # > 0: shift *= sqrt(latent frames*h*w / this); 0 = off
    s.sde_noise_scale = 1.0                # g of the SDE diffusion w(t) = g (1 - t)
    s.guidance = "jit"                     # JIT-CFG, one text+image null pass (§4.3) | sit (3 passes) | none
    s.cfg_scale = 7.5                      # JIT-CFG scale / SIT text scale (App. B: 7.5 for T2V and STIV)
    s.cfg_image_scale = 1.5                # image scale of SIT-CFG (only read with guidance='sit')
    s.renorm = True                        # CFG-renormalisation to the conditional norm (App. A)
    s.null_image = "noisy"                 # what the unconditional pass sees in given frames: noisy | zero
    s.fps = 8                              # fps of written videos (1 of 3 frames of ~24 fps sources)
    return s


def _validation() -> ml_collections.ConfigDict:
    """``config.eval.validation``: in-training validation every ``sample_every`` steps (eval/validation.py)."""
    v = ml_collections.ConfigDict()
    v.prompts = (                          # fixed T2V prompts, one grid cell each
        "a cyclist rides past a white delivery van in the city", "a big white rabbit stands in a sunny meadow",
        "a man talks on a phone in a car", "a butterfly flies over the grass")
    v.heldout = ""                         # held-out real clips (shards dir/glob or video dir): TI2V images, FVD
    v.ti2v_samples = 2                     # TI2V cells: first frames of the first N held-out clips, with captions
    v.fvd_clips = 0                        # FVD of N T2V samples vs N held-out clips (0: off; needs frames >= 9)
    v.fvd_prompts = ()                     # prompts of the FVD samples, cycled (empty: the prompts above)
    v.seed = 0                             # sample i uses noise seed seed + i at every validation
    v.num_steps = placeholder(int)         # solver steps (None or 0: config.sample.num_steps)
    v.cfg_scale = placeholder(float)       # guidance scale (None: config.sample.cfg_scale)
    v.grid_columns = 4                     # cells per grid row
    v.learning_prompts = 0                 # held-out digit prompts scored for adherence/direction/speed (0: off)
    v.score_ti2v = False                   # PSNR/SSIM of the TI2V cells vs their true clips, static copy beside
    return v


def _vbench() -> ml_collections.ConfigDict:
    """``config.eval.vbench``: the VBench prompt suite (python -m stiv_jax.eval.vbench)."""
    v = ml_collections.ConfigDict()
    v.samples_per_prompt = 5               # VBench standard: 5 videos per prompt ({prompt}-{0..4}.mp4)
    v.seed = 0                             # video i of prompt p uses noise seed seed + 5 p + i
    v.num_steps = placeholder(int)         # solver steps (None or 0: config.sample.num_steps)
    v.cfg_scale = placeholder(float)       # guidance scale (None: config.sample.cfg_scale)
    v.resolution = placeholder(int)        # written videos resized to this square side (None or 0: the model's)
    v.fps = placeholder(int)               # fps written in the mp4 (None or 0: config.sample.fps)
    v.dimensions = ()                      # VBench dimensions to sample (empty: all 16)
    v.max_prompts = placeholder(int)       # first N prompts only, for a quick look (None or 0: all)
    return v


def _init() -> ml_collections.ConfigDict:
    """``config.init``: where a stage's weights start (stiv_jax/stages/transition.py)."""
    i = ml_collections.ConfigDict()
    i.sources = ml_collections.ConfigDict()  # name -> workdir of a finished stage (empty: from scratch)
    i.use_ema = True                       # initialise from the sources' EMA weights (App. B)
    i.assign = ()                          # (regex over parameter paths, source name | "new"); first match wins
    i.inflate_patch_embed = False          # allow temporal_patch 1 -> 2 inflation of the patch embed/output
    return i


def _finetune() -> ml_collections.ConfigDict:
    """``config.finetune``: what trains (stiv_jax/training/finetune.py) and the LoRA adapters."""
    f = ml_collections.ConfigDict()
    # Regexes over '/'-joined parameter paths of what trains; () = all, or the LoRA adapters alone when
    # lora.rank > 0
    f.trainable = ()
    f.lora = ml_collections.ConfigDict()
    f.lora.rank = 0                        # rank of the adapters W + (alpha / rank) A B; 0: no adapters
    f.lora.alpha = placeholder(float)      # update scale numerator (None: rank, a scale of 1)
    f.lora.dropout = 0.0                   # dropout on the adapters' inputs (training only)
    f.lora.targets = ""                    # regex re.search-ed over projection paths ('block_3/spatial_attn/query')
    return f
