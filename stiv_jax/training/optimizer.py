"""Optimizer and learning-rate schedule from ``config.optim``."""
from __future__ import annotations

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


def build_optimizer(optim_config) -> optax.GradientTransformation:
    """Global-norm clipping followed by AdamW or AdaFactor (``config.optim.name``)."""
    schedule = learning_rate_schedule(optim_config)
    if optim_config.name == "adamw":
        opt = optax.adamw(schedule, b1=optim_config.b1, b2=optim_config.b2, weight_decay=optim_config.weight_decay)
    else:
        raise ValueError(f"config.optim.name={optim_config.name!r}; valid: adamw")
    return optax.chain(optax.clip_by_global_norm(optim_config.grad_clip), opt)
