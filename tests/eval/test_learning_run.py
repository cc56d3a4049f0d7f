"""A short CPU training on the procedural digit set lifts prompt adherence on held-out prompts above chance.

The run is CPU-sized (a 2-block, 64-wide DiT; 2-frame 32x32 clips, text-to-video only) and seeded; the test asserts
a margin over chance, never a time. What a run this short learns first is the named colour (chance 1/6): the digit
shape takes longer (bench/learning.py measures it over a longer run; BENCHMARKS.md).
"""
import numpy as np

from stiv_jax.data import procedural
from stiv_jax.eval import learning

CHANCE = 0.1          # digit adherence of a video without a digit
COLOUR_CHANCE = 1 / 6
STEPS = 300


def test_short_training_raises_adherence_above_chance(tmp_path):
    from experiments import learning as learning_config
    from stiv_jax.eval.generation import EvalSampler
    from stiv_jax.sampling.run import load_params
    from stiv_jax.train import train
    procedural.write_set(out=str(tmp_path / "digits"), num_clips=300, frames=2, seed=0)
    config = learning_config.get_config()
    config.data.shards = str(tmp_path / "digits")
    config.data.frames, config.data.batch_size = 2, 16
    config.model.size, config.model.temporal_patch = "tiny", 1
    config.text.dim = 64
    config.diffusion.tasks = dict(t2v=1.0)
    config.total_steps, config.checkpoint_every, config.sample_every, config.log_every = STEPS, STEPS, 0, 50
    config.optim.lr, config.optim.ema_decay = 2e-3, 0.95
    train(config, str(tmp_path / "run"))

    config, bundle, params = load_params(str(tmp_path / "run"))
    prompts = procedural.heldout_prompts(20)
    sampler = EvalSampler(config, bundle, num_steps=10, cfg_scale=3.0, batch_size=20)
    videos = sampler(params, prompts, seeds=list(range(len(prompts))))
    untrained = np.repeat(videos[:, :1] * 0 + 128, 2, axis=1).astype(np.uint8)   # a grey video: no digit at all
    scores = learning.score_t2v(videos, prompts)
    assert learning.score_t2v(untrained, prompts)["adherence"] <= CHANCE + 0.05
    assert scores["colour"] >= COLOUR_CHANCE + 0.3, scores
