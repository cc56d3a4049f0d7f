"""Generation with one STIV model for every task: guided velocity + solver, given frames re-imposed every step.

``Generator`` holds the jitted guided model call (compiled once per batch shape) and turns prompts plus
optional given latents into latent videos; ``to_uint8`` decodes them through the run's latent space.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from stiv_jax.diffusion import flow, samplers, tasks
from stiv_jax.diffusion.guidance import Guidance, guided_velocity
from stiv_jax.parallel import mesh as mesh_lib
from stiv_jax.model.bundle import ModelBundle, default_micro_conditions  # noqa: F401 (re-used)


@dataclasses.dataclass(frozen=True)
class SolverSettings:
    """Solver, steps and timestep shift (``config.sample``)."""

    solver: str = "euler"
    num_steps: int = 50
    shift: float = 1.0
    noise_scale: float = 1.0

    @classmethod
    def from_config(cls, sample_config, latent_shape, *, solver=None, num_steps=None, shift=None):
        return cls(solver=solver or sample_config.solver, num_steps=num_steps or sample_config.num_steps,
                   shift=shift if shift is not None else flow.timestep_shift(sample_config, latent_shape),
                   noise_scale=sample_config.sde_noise_scale)


class Generator:
    """Samples latent videos ``[batch, frames, height, width, channels]`` from a model bundle and parameters."""

    def __init__(self, bundle: ModelBundle, params, guidance: Guidance, solver: SolverSettings):
        self.bundle, self.params, self.guidance, self.solver = bundle, params, guidance, solver

        def velocity(params, x, t, clean, frame_mask, noise, cond_context, null_context):
            def model_fn(latents, timesteps, context):
                return bundle.velocity(params, latents, timesteps, context["ids"], context["mask"],
                                       micro_conditions=context["micro"])
            return guided_velocity(model_fn, guidance, latents=x, timesteps=t, clean=clean, frame_mask=frame_mask,
                                   noise=noise, cond_context=cond_context, null_context=null_context)

        self._velocity = jax.jit(velocity)

    def contexts(self, prompts: list[str], micro: np.ndarray):
        """Model contexts (tokens + micro-conditions) of ``prompts`` and of the empty prompt."""
        ids, mask = self.bundle.tokenize(list(prompts))
        null_ids, null_mask = self.bundle.tokenize([""] * len(prompts))
        cond = dict(ids=jnp.asarray(ids), mask=jnp.asarray(mask), micro=jnp.asarray(micro, jnp.float32))
        null = dict(ids=jnp.asarray(null_ids), mask=jnp.asarray(null_mask), micro=cond["micro"])
        return cond, null

    def latents(self, prompts: list[str], *, micro: np.ndarray, seed: int | list[int], clean: jnp.ndarray | None = None,
                frame_mask: np.ndarray | None = None, progress: bool | str = False) -> jnp.ndarray:
        """Samples one latent video per prompt.

        Args:
          prompts: ``batch`` prompts ("" for none).
          micro: ``[batch, 6]`` micro-conditions (``default_micro_conditions``).
          seed: noise seed, or one seed per sample (then a sample's noise does not depend on its batch).
          clean: given latents ``[batch, frames, height, width, channels]`` (used where ``frame_mask``).
          frame_mask: ``[batch, frames]`` or ``[frames]`` bool, True for given frames (None: T2V).

        Returns:
          ``[batch, frames, height, width, channels]``; given frames equal ``clean`` exactly.
        """
        batch = len(prompts)
        shape = (batch,) + tuple(self.bundle.latent_shape)
        seeds = [seed] * batch if isinstance(seed, int) else list(seed)
        keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
        noise = jax.vmap(lambda k: jax.random.normal(k, shape[1:]))(keys)
        if frame_mask is None:
            frame_mask = np.zeros(shape[:2], bool)
        frame_mask = jnp.broadcast_to(jnp.asarray(frame_mask, bool), shape[:2])
        clean = jnp.zeros(shape) if clean is None else jnp.broadcast_to(jnp.asarray(clean, jnp.float32), shape)
        cond, null = self.contexts(prompts, micro)

        def velocity_fn(x, t):
            return self._velocity(self.params, x, t, clean, frame_mask, noise, cond, null)

        s = self.solver
        return samplers.sample(velocity_fn, noise, num_steps=s.num_steps, solver=s.solver, shift=s.shift,
                               rng=jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys), noise_scale=s.noise_scale, clean=clean,
                               frame_mask=frame_mask if bool(frame_mask.any()) else None, progress=progress)

    def encode(self, frames_uint8: np.ndarray) -> jnp.ndarray:
        """uint8 ``[batch, frames, height, width, 3]`` -> latents through the run's latent space."""
        video = jnp.asarray(frames_uint8, jnp.float32) / 127.5 - 1.0
        return self.bundle.latent_space.encode(None, video)

    def to_uint8(self, latents: jnp.ndarray) -> np.ndarray:
        """Latents -> uint8 ``[batch, frames, height, width, 3]`` through the run's latent space (the whole batch
        on every process, also when the latents are sharded over several processes' devices)."""
        video = mesh_lib.fetch_global(self.bundle.latent_space.decode(None, latents))
        return np.clip(np.round((video + 1.0) * 127.5), 0, 255).astype(np.uint8)


def given_frames(task: str, frames: int, *, predict_frames: int = 4) -> np.ndarray:
    """The ``[frames]`` bool layout a sampling task gives (``tasks.task_frame_mask``; ``long`` is two passes)."""
    if task == "long":
        raise ValueError("the long task runs two passes; use stiv_jax.sampling.long_video.generate_long")
    return tasks.task_frame_mask(task, frames, predict_frames=predict_frames)


def generate(bundle: ModelBundle, params, prompts: list[str], *, num_steps: int, cfg_scale: float,
             seed: int, config=None) -> np.ndarray:
    """Text-to-video with JIT-CFG + renorm and Euler (the skeleton's entry point); uint8 ``[b, f, h, w, 3]``."""
    gen = Generator(bundle, params, Guidance(mode="jit", scale=cfg_scale),
                    SolverSettings(solver="euler", num_steps=num_steps))
    micro = (default_micro_conditions(config, len(prompts)) if config is not None
             else np.zeros((len(prompts), 6), np.float32))
    return gen.to_uint8(gen.latents(prompts, micro=micro, seed=seed))
