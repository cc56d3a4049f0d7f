"""Optimizer and learning-rate schedule from ``config.optim``.

``name = 'adafactor'`` is the paper's optimizer (STIV paper's training recipe, as AXLearn's ``adafactor_optimizer``): factored second
moments with a constant decay ``b2``, first-moment EMA ``b1`` (no bias correction), absolute step size, optional
update clipping by block RMS, no weight decay. ``name = 'adamw'`` is the usual AdamW. Both follow a global-norm
gradient clip (``grad_clip``, 1.0 in the paper).
"""
from __future__ import annotations

import jax.numpy as jnp
import optax


def learning_rate_schedule(optim_config) -> optax.Schedule:
    """Linear warmup to ``lr``, then ``constant`` (paper) or ``cosine`` decay to 0 at ``decay_steps``."""
    warmup = optax.linear_schedule(0.0, optim_config.lr, max(1, optim_config.warmup_steps))
    if optim_config.schedule == "constant":
        after = optax.constant_schedule(optim_config.lr)
    elif optim_config.schedule == "cosine":
        after = optax.cosine_decay_schedule(optim_config.lr, max(1, optim_config.decay_steps))
    else:
        raise ValueError(f"config.optim.schedule={optim_config.schedule!r}; valid: constant, cosine")
    return optax.join_schedules([warmup, after], [optim_config.warmup_steps])


def adafactor(schedule: optax.Schedule, *, b1: float | None, b2: float, min_dim_size_to_factor: int = 128,
              block_rms_clip: float | None = None, eps: float = 1e-30) -> optax.GradientTransformation:
    """AdaFactor with a constant second-moment decay ``b2`` (optax's default decays as ``1 - t^-0.8``).

    State: factored row/column second moments (``v_row``/``v_col``) for parameters with two dims of at least
    ``min_dim_size_to_factor``, a full ``v`` otherwise, and a first moment when ``b1`` is set.
    """
    parts = [optax.scale_by_factored_rms(decay_rate=b2, decay_rate_fn=lambda _step, rate: jnp.asarray(rate),
                                         min_dim_size_to_factor=min_dim_size_to_factor, epsilon=eps)]
    if block_rms_clip:
        parts.append(optax.clip_by_block_rms(block_rms_clip))
    if b1:
        parts.append(optax.ema(b1, debias=False))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts)


def build_optimizer(optim_config) -> optax.GradientTransformation:
    """Global-norm clipping followed by AdaFactor or AdamW (``config.optim.name``)."""
    schedule = learning_rate_schedule(optim_config)
    if optim_config.name == "adamw":
        opt = optax.adamw(schedule, b1=optim_config.b1, b2=optim_config.b2, weight_decay=optim_config.weight_decay)
    elif optim_config.name == "adafactor":
        if optim_config.weight_decay:
            raise ValueError("config.optim.weight_decay must be 0 with adafactor (the paper uses none)")
        opt = adafactor(schedule, b1=optim_config.b1, b2=optim_config.b2,
                        min_dim_size_to_factor=optim_config.min_dim_size_to_factor,
                        block_rms_clip=optim_config.block_rms_clip)
    else:
        raise ValueError(f"config.optim.name={optim_config.name!r}; valid: adamw, adafactor")
    return optax.chain(optax.clip_by_global_norm(optim_config.grad_clip), opt)
