"""Sampling for evaluation: prompts (T2V) or prompts + first frames (TI2V) through ONE sampler ``Generator``.

Validation and the VBench harness call the sampler many times, with new parameters (validation) or new prompts
(VBench). :class:`EvalSampler` builds the :class:`~stiv_jax.sampling.generate.Generator` once and pads every
request to one batch size, so the guided model call is compiled once for the life of the process: T2V and TI2V
requests share that executable (the given-frame mask is an array argument, all False for T2V).
"""
from __future__ import annotations

import math

import jax
import numpy as np

from stiv_jax.diffusion import tasks
from stiv_jax.diffusion.guidance import Guidance
from stiv_jax.parallel import mesh as mesh_lib
from stiv_jax.parallel import rules as rules_lib
from stiv_jax.sampling.generate import Generator, SolverSettings, default_micro_conditions


class EvalSampler:
    """``sampler(params, prompts, *, seeds, first_frames=None)`` -> uint8 ``[len(prompts), frames, height, width,
    3]``.

    Sample ``i`` is drawn from noise seed ``seeds[i]`` alone, so it does not depend on the other prompts of the
    request, on the padding, or on ``batch_size``. ``first_frames``: uint8 ``[len(prompts), height, width, 3]``
    given as frame 0 (the TI2V layout of ``tasks.task_frame_mask``), at the run's resolution; None: T2V.

    Args:
      run_config: the run's config (``sample`` for solver and guidance, ``data`` for micro-conditions).
      bundle: the run's model bundle.
      num_steps: solver steps (None: ``config.sample.num_steps``).
      cfg_scale: guidance scale (None: ``config.sample.cfg_scale``).
      batch_size: videos per model call; requests are split and padded to it (one compiled shape).
      mesh, rules: the mesh the params live on (the training mesh during validation) and its logical rules;
        ``batch_size`` is then rounded up to a multiple of the batch axes' size, so the model's batch sharding
        divides evenly.
    """

    def __init__(self, run_config, bundle, *, num_steps: int | None = None, cfg_scale: float | None = None,
                 batch_size: int = 1, mesh: jax.sharding.Mesh | None = None, rules=None):
        self.config = run_config
        self.batch_size = max(1, int(batch_size))
        if mesh is not None:
            batch_axes = mesh_lib.batch_sharding(mesh, rules or rules_lib.DEFAULT_LOGICAL_RULES, 1).spec[0]
            batch_axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes or ())
            shards = math.prod(mesh.shape[a] for a in batch_axes)
            self.batch_size = -(-self.batch_size // shards) * shards
        guidance = Guidance.from_config(run_config.sample, scale=cfg_scale)
        solver = SolverSettings.from_config(run_config.sample, bundle.latent_shape, num_steps=num_steps)
        # Parameters are set per call; the generator's jitted model call takes them as an argument.
        self.generator = Generator(bundle, None, guidance, solver)
        self._jitted = self.generator._velocity  # noqa: SLF001
        if mesh is not None:
            # Under the training mesh the solver's inputs arrive with differing shardings (host-made noise and
            # masks, mesh-sharded states after the first step), each a compile of its own; placing every input
            # replicated on the mesh gives the model call one input layout.
            replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            jitted = self._jitted
            self.generator._velocity = lambda params, *inputs: jitted(params, *jax.device_put(inputs, replicated))

    @property
    def num_compiled(self) -> int:
        """Executables of the guided model call compiled so far (1 after any number of calls)."""
        return self._jitted._cache_size()  # noqa: SLF001 - jax's per-function compile cache

    def __call__(self, params, prompts: list[str], *, seeds: list[int],
                 first_frames: np.ndarray | None = None) -> np.ndarray:
        prompts, seeds = list(prompts), [int(s) for s in seeds]
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        if first_frames is not None and len(first_frames) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(first_frames)} first frames")
        self.generator.params = params
        out = []
        for start in range(0, len(prompts), self.batch_size):
            stop = min(start + self.batch_size, len(prompts))
            pad = self.batch_size - (stop - start)
            chunk_prompts = prompts[start:stop] + [prompts[stop - 1]] * pad
            chunk_seeds = seeds[start:stop] + [seeds[stop - 1]] * pad
            chunk_frames = None
            if first_frames is not None:
                chunk_frames = np.concatenate([first_frames[start:stop], first_frames[stop - 1:stop].repeat(pad, 0)])
            out.append(self._sample(chunk_prompts, chunk_seeds, chunk_frames)[:stop - start])
        return np.concatenate(out)

    def _sample(self, prompts: list[str], seeds: list[int], first_frames: np.ndarray | None) -> np.ndarray:
        gen, data = self.generator, self.config.data
        frames, resolution = int(data.frames), int(data.resolution)
        clean = frame_mask = None
        if first_frames is not None:
            first_frames = np.asarray(first_frames, np.uint8)
            if first_frames.shape[1:] != (resolution, resolution, 3):
                raise ValueError(f"first frames are {first_frames.shape[1:]}; the run samples "
                                 f"{resolution}x{resolution} RGB (config.data.resolution)")
            clip = np.zeros((len(prompts), frames, resolution, resolution, 3), np.uint8)
            clip[:, 0] = first_frames
            clean = gen.encode(clip)
            frame_mask = tasks.task_frame_mask("ti2v", frames)
        latents = gen.latents(prompts, micro=default_micro_conditions(self.config, len(prompts)), seed=seeds,
                              clean=clean, frame_mask=frame_mask)
        return gen.to_uint8(latents)
