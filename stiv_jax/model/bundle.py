"""Builds the pieces a run needs from its config: DiT, text encoder and tokenizer, latent space."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stiv_jax.encoders.latent import build_latent_space
from stiv_jax.encoders.pretrained import require_checkpoints
from stiv_jax.encoders.text import TextEncoder, build_text_encoder
from stiv_jax.model.config import DiTConfig
from stiv_jax.model.dit import STIVDiT

PREDICTIONS = ("velocity", "data")


@dataclasses.dataclass(frozen=True)
class ModelBundle:
    """The DiT plus the encoders around it, and how to initialise their (boxed) parameters.

    Trainable parameters are ``{'dit': ..., 'text': ...}``; ``'text'`` is empty for a frozen pretrained encoder,
    whose weights stay outside the train state (no optimizer moments, no EMA, not checkpointed).
    """

    dit: STIVDiT
    text_encoder: TextEncoder
    latent_space: Any
    latent_shape: tuple[int, int, int, int]    # [frames, height, width, channels] of one training latent
    text_length: int
    prediction: str = "velocity"               # what the DiT outputs: 'velocity' (paper) or 'data' (JiT)
    min_time_gap: float = 0.05                 # 'data' prediction: velocity = (x1_hat - x_t) / max(1 - t, gap)
    # Micro-conditions of an uncropped training clip (model.MICRO_CONDITIONS order), used when none are given.
    default_micro: tuple[float, ...] = (0.0,) * 6

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [batch, text_length] int32, mask [batch, text_length] bool)``."""
        return self.text_encoder.tokenize(texts, self.text_length)

    def micro_conditions(self, batch: int, micro_conditions=None) -> jax.Array:
        """``[batch, 6]`` float32: ``micro_conditions`` if given, else ``default_micro`` for every sample."""
        if micro_conditions is not None:
            return jnp.asarray(micro_conditions, jnp.float32)
        return jnp.broadcast_to(jnp.asarray(self.default_micro, jnp.float32), (batch, 6))

    def init_boxed_params(self, rng: jax.Array) -> dict:
        """Trainable parameters ``{'dit': ..., 'text': ...}`` with their logical-partitioning boxes."""
        text_rng, dit_rng = jax.random.split(rng)
        ids = jnp.zeros((1, self.text_length), jnp.int32)
        mask = jnp.ones((1, self.text_length), bool)
        if self.text_encoder.frozen:   # the DiT's init needs only the embeddings' shapes
            text_params = {}
            seq = jnp.zeros((1, self.text_length, self.text_encoder.dim))
            pooled = jnp.zeros((1, self.text_encoder.dim))
        else:
            text_params = self.text_encoder.init(text_rng, ids, mask)["params"]
            seq, pooled = self.encode_text({"text": text_params}, ids, mask)
        latents = jnp.zeros((1,) + self.latent_shape)
        dit_params = self.dit.init(dit_rng, latents, timesteps=jnp.zeros((1,)), text=seq, text_mask=mask,
                                   pooled_text=pooled, micro_conditions=self.micro_conditions(1))["params"]
        return {"dit": dit_params, "text": text_params}

    def frozen_boxed_params(self, batch_keys=()) -> dict:
        """Frozen encoder weights a train step on batches with ``batch_keys`` needs, as one step argument.

        ``'text'``: a frozen pretrained text encoder's params (logically boxed, so they shard like the model),
        unless the batch carries precomputed ``text_embeddings``; ``'latent'``: the VAE's params, unless the batch
        carries precomputed ``latents``. Passing them as an argument (not closed-over constants) keeps multi-GB
        encoders out of the compiled program and lets them shard over the mesh.
        """
        frozen = {}
        if self.text_encoder.frozen and "text_embeddings" not in batch_keys:
            frozen["text"] = self.text_encoder.boxed_pretrained_params()
        latent_params = getattr(self.latent_space, "params", None)
        if latent_params is not None and "latents" not in batch_keys:
            frozen["latent"] = latent_params
        return frozen

    def encode_text(self, params, ids, mask, frozen=None):
        """``(sequence [batch, len, dim], pooled [batch, dim])`` for token ``ids``/``mask`` ``[batch, len]``.

        A frozen encoder uses ``frozen['text']`` when given, else the host copy of its weights (which a jitted
        caller bakes in as constants: fine for small encoders and sampling, not for the train step).
        """
        if not self.text_encoder.frozen:
            text_params = params["text"]
        elif frozen is not None and "text" in frozen:
            text_params = frozen["text"]
        else:
            text_params = self.text_encoder.pretrained_params
        return self.text_encoder.apply({"params": text_params}, ids, mask)

    def null_text(self) -> tuple[jax.Array, jax.Array, tuple[jax.Array, jax.Array]]:
        """The empty prompt's ``(ids, mask, (sequence, pooled))``, ``[1, text_length(, dim)]``, evaluated eagerly
        (concrete even inside a trace): the CFG null text of batches with precomputed text embeddings."""
        if not self.text_encoder.frozen:
            raise ValueError(f"batches with precomputed text_embeddings need a frozen text encoder, but "
                             f"config.text.kind={self.text_encoder.kind!r} is trainable")
        if self.text_encoder.abstract:   # fit check without the weights: a constant of the right shape
            length, dim = self.text_length, self.text_encoder.dim
            mask = jnp.zeros((1, length), bool).at[:, 0].set(True)
            return jnp.zeros((1, length), jnp.int32), mask, (jnp.zeros((1, length, dim)), jnp.zeros((1, dim)))
        ids, mask = (jnp.asarray(a) for a in self.tokenize([""]))
        with jax.ensure_compile_time_eval():
            return ids, mask, tuple(jnp.asarray(x) for x in self.encode_text({}, ids, mask))

    def velocity(self, params, latents, timesteps, ids, mask, *, text=None, frozen=None, micro_conditions=None,
                 mask_rng=None, dropout_rng=None):
        """The velocity for latents ``[batch, frames, height, width, channels]`` at ``timesteps`` ``[batch]``.

        ``ids``/``mask`` ``[batch, len]``: the prompt tokens, or ``text = (sequence [batch, len, dim], pooled
        [batch, dim])`` precomputed (``ids`` then unused); ``frozen``: frozen encoder weights
        (``frozen_boxed_params``, unboxed). ``micro_conditions`` ``[batch, 6]`` (the batch's; ``default_micro``
        when None); ``mask_rng``: MaskDiT key (None = no token masking, as in fine-tuning and sampling);
        ``dropout_rng``: LoRA dropout key (training only; None = no dropout).

        With ``prediction='data'`` the DiT predicts the clean sample and the velocity is derived from it
        (Li & He 2025, "Back to Basics: Let Denoising Generative Models Denoise"): a network narrower than its
        patch vectors cannot pass high-dimensional noise through, but can output data near a low-dimensional
        manifold. The loss stays the velocity loss either way.
        """
        seq, pooled = self.encode_text(params, ids, mask, frozen) if text is None else text
        micro = self.micro_conditions(latents.shape[0], micro_conditions)
        out = self.dit.apply({"params": params["dit"]}, latents, timesteps=timesteps, text=seq, text_mask=mask,
                             pooled_text=pooled, micro_conditions=micro, mask_rng=mask_rng,
                             rngs=None if dropout_rng is None else {"dropout": dropout_rng})
        if self.prediction == "velocity":
            return out
        gap = jnp.maximum(1.0 - timesteps, self.min_time_gap).reshape((-1,) + (1,) * (latents.ndim - 1))
        return (out - latents) / gap


def default_micro_conditions(config, batch: int, *, frame_stride: float | None = None) -> np.ndarray:
    """``[batch, 6]`` float32 micro-conditions of an uncropped training-size clip: orig h, orig w, crop top,
    crop left, frame stride (default ``config.data.frame_stride``), frame count."""
    res = float(config.data.resolution)
    stride = float(config.data.frame_stride if frame_stride is None else frame_stride)
    row = np.array([res, res, 0.0, 0.0, stride, float(config.data.frames)], np.float32)
    return np.tile(row, (batch, 1))


def lora_fields(config) -> dict:
    """``DiTConfig`` LoRA fields from ``config.finetune.lora`` (empty without one, or with rank 0)."""
    # ``.get``: sampling and export rebuild the model from a checkpoint's saved config.json, which has no
    # ``finetune`` when written before experiments/base.py gave every config one (or ``alpha`` etc. unset).
    lora = (config.get("finetune", None) or {}).get("lora", None)
    if not lora or not lora.get("rank", 0):
        return {}
    known = {"rank", "alpha", "dropout", "targets"}
    unknown = sorted(set(lora) - known)
    if unknown:
        raise ValueError(f"config.finetune.lora has unknown keys {unknown}; valid keys: {sorted(known)}")
    alpha = lora.get("alpha", None)   # None (the base's value) or absent: the rank, a scale of 1
    return dict(lora_rank=int(lora["rank"]), lora_alpha=float(lora["rank"] if alpha is None else alpha),
                lora_dropout=float(lora.get("dropout", 0.0)), lora_targets=str(lora.get("targets", "")))


def build_model_bundle(config, *, abstract: bool = False) -> ModelBundle:
    """All model pieces from ``config`` (``model``, ``text``, ``latent``, ``data``, ``diffusion`` sections).

    Pretrained encoders whose files are absent: one error naming every missing key (``require_checkpoints``);
    ``abstract=True`` (the fit check) builds them with ``ShapeDtypeStruct`` weights instead.
    """
    if not abstract:
        require_checkpoints(config)
    latent_space = build_latent_space(config.latent, abstract=abstract)
    text_encoder = build_text_encoder(config.text, abstract=abstract)
    model_config = DiTConfig.from_config(dict(config.model, latent_channels=latent_space.channels,
                                              text_dim=text_encoder.dim, **lora_fields(config)))
    res = config.data.resolution
    factor = config.latent.factor
    latent_shape = (config.data.frames, res // factor, res // factor, latent_space.channels)
    default_micro = tuple(float(v) for v in default_micro_conditions(config, 1)[0])
    # ``.get``: a checkpoint's saved config.json may predate diffusion.prediction / min_time_gap (velocity, 0.05).
    prediction = config.diffusion.get("prediction", "velocity")
    if prediction not in PREDICTIONS:
        raise ValueError(f"config.diffusion.prediction={prediction!r}; valid: {PREDICTIONS}")
    return ModelBundle(dit=STIVDiT(model_config), text_encoder=text_encoder, latent_space=latent_space,
                       latent_shape=latent_shape, text_length=config.text.max_length, prediction=prediction,
                       min_time_gap=config.diffusion.get("min_time_gap", 0.05), default_micro=default_micro)
