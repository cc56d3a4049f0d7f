"""The compiled train step: one jit for the trainer, the AOT fit check (``stiv_jax.compile``) and the benches.

``batch_specs`` is the schema of one global batch as the data pipeline emits it (the fit check compiles for it
without data); ``compile_train_step`` lowers and compiles the step for a state, a batch and the frozen encoder
weights (concrete arrays or ``jax.ShapeDtypeStruct``s with shardings); :class:`StepCache` keeps the trainer's
executables, one per batch shape (data buckets give several), and the frozen weights each batch kind needs.
"""
from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp

from stiv_jax.parallel import mesh as mesh_lib
from stiv_jax.training import flops as flops_lib
from stiv_jax.training import state as state_lib
from stiv_jax.training.step import make_train_step


def batch_specs(config, bucket, *, latent_shape=None) -> dict:
    """Shapes and dtypes of one global batch of ``bucket``, as the data pipeline emits it.

    ``config.data.kind='video'``: uint8 ``video`` ``[b, frames, height, width, 3]`` and token ids (the step runs
    the frozen VAE and text encoder). ``'latent'``: precomputed ``latents`` ``[b, *latent_shape]`` and
    ``text_embeddings`` ``[b, max_length, text.dim]`` / ``pooled_text`` ``[b, text.dim]`` in bfloat16 (what
    ``stiv_jax.data.encode --dtype=bfloat16`` stores), so the step holds no encoder. ``latent_shape``:
    ``[frames, height, width, channels]`` of one latent clip (``ModelBundle.latent_shape``), for ``'latent'``.
    """
    kind = config.data.kind
    b, length = bucket.batch_size, config.text.max_length
    specs = {"micro_conditions": jax.ShapeDtypeStruct((b, 6), jnp.float32),
             "fps": jax.ShapeDtypeStruct((b,), jnp.float32),
             "record_id": jax.ShapeDtypeStruct((b,), jnp.int32),
             "text_mask": jax.ShapeDtypeStruct((b, length), jnp.bool_)}
    if kind == "video":
        return dict(specs, video=jax.ShapeDtypeStruct((b, bucket.frames, bucket.height, bucket.width, 3), jnp.uint8),
                    text_ids=jax.ShapeDtypeStruct((b, length), jnp.int32))
    if kind == "latent":
        if latent_shape is None:
            raise ValueError("config.data.kind='latent': batch_specs needs the latent_shape of one clip")
        dim = config.text.dim
        return dict(specs, latents=jax.ShapeDtypeStruct((b, *latent_shape), jnp.bfloat16),
                    text_embeddings=jax.ShapeDtypeStruct((b, length, dim), jnp.bfloat16),
                    pooled_text=jax.ShapeDtypeStruct((b, dim), jnp.bfloat16))
    raise ValueError(f"config.data.kind={kind!r}: the fit check builds 'video' or 'latent' batches")


def compile_train_step(config, bundle, tx, *, state, batch, frozen, shardings, mesh, rules):
    """Lowers and compiles the train step with the state's shardings in and out and the state donated.

    ``state``/``batch``/``frozen``: arrays or abstract values carrying their shardings (the batch over the batch
    axes, ``frozen`` the frozen encoder weights as ``state.place_frozen`` lays them out).

    Returns ``(compiled, activation_lines)``: one line per activation sharding constraint traced (logical and
    physical axes), which the trainer prints with ``config.mesh.debug_sharding``.
    """
    jitted = jax.jit(make_train_step(config, bundle, tx), in_shardings=(shardings, None, None),
                     out_shardings=(shardings, None), donate_argnums=0)
    with mesh_lib.activate(mesh, rules), mesh_lib.record_activation_shardings() as activation_lines:
        lowered = jitted.lower(state, batch, frozen)
    return lowered.compile(), list(activation_lines)


def step_flops(config, bundle, batch_shapes: dict) -> float:
    """Analytic FLOPs of one step (all devices) on a global batch of ``batch_shapes`` (its frames, size, batch)."""
    latent = flops_lib.batch_latent_shape(batch_shapes, latent_shape=bundle.latent_shape,
                                          latent_factor=int(config.latent.factor))
    batch_size = batch_shapes["latents" if "latents" in batch_shapes else "video"][0]
    return flops_lib.train_step_flops(bundle.dit.config, latent_shape=latent, text_length=bundle.text_length,
                                      text_dim=config.text.dim, batch_size=batch_size)


def batch_key(batch: dict) -> tuple:
    """The hashable shape of a batch: ``((name, shape), ...)`` sorted by name."""
    return tuple(sorted((k, tuple(v.shape)) for k, v in batch.items()))


class StepCache:
    """The run's train step, compiled once per batch shape, with the frozen encoder weights on the mesh.

    ``steps(state, batch)`` -> ``(state, metrics)``. ``on_compile(key, seconds, activation_lines, count)`` is
    called after each new compile (``count``: executables held, 1 for the first).
    """

    def __init__(self, config, bundle, tx, *, shardings, mesh, rules,
                 on_compile: Callable[[tuple, float, list, int], None] | None = None):
        self.config, self.bundle, self.tx = config, bundle, tx
        self.shardings, self.mesh, self.rules = shardings, mesh, rules
        self.on_compile = on_compile
        self._compiled: dict = {}
        self._frozen: dict = {}   # by (has latents, has text embeddings): which encoders the step must run
        self._flops: dict = {}

    def frozen_for(self, batch: dict) -> dict:
        kind = ("latents" in batch, "text_embeddings" in batch)
        if kind not in self._frozen:
            self._frozen[kind], _ = state_lib.place_frozen(self.bundle.frozen_boxed_params(batch), self.mesh,
                                                           self.rules)
        return self._frozen[kind]

    def executable(self, state, batch: dict):
        """The compiled step for ``batch``'s shape (compiled now if new)."""
        key = batch_key(batch)
        if key not in self._compiled:
            start = time.perf_counter()
            self._compiled[key], lines = compile_train_step(
                self.config, self.bundle, self.tx, state=state, batch=batch, frozen=self.frozen_for(batch),
                shardings=self.shardings, mesh=self.mesh, rules=self.rules)
            if self.on_compile is not None:
                self.on_compile(key, time.perf_counter() - start, lines, len(self._compiled))
        return self._compiled[key]

    def __call__(self, state, batch: dict):
        return self.executable(state, batch)(state, batch, self.frozen_for(batch))

    def flops(self, batch: dict) -> float:
        """:func:`step_flops` of ``batch``'s bucket, computed once per shape."""
        key = batch_key(batch)
        if key not in self._flops:
            self._flops[key] = step_flops(self.config, self.bundle, dict(key))
        return self._flops[key]
