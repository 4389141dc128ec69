"""The optax chain: gradient clipping, AdamW with warmup + cosine decay, accumulation.

Weight decay applies to matrices only (ndim >= 2): norms, biases and the shared-expert mix
bias are not decayed.
"""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(train_config) -> optax.Schedule:
    """Linear warmup to `learning_rate`, cosine decay to `learning_rate * min_lr_ratio`."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=train_config.learning_rate,
        warmup_steps=train_config.warmup_steps,
        decay_steps=max(train_config.steps, train_config.warmup_steps + 1),
        end_value=train_config.learning_rate * train_config.get("min_lr_ratio", 0.1),
    )


def _decay_mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(train_config) -> optax.GradientTransformation:
    """The optimizer of `config.train`.

    Fields read: learning_rate, warmup_steps, steps, min_lr_ratio, weight_decay, b1, b2,
    grad_clip (global norm; 0 = off), grad_accumulation (micro-steps per update).
    """
    accumulation = train_config.get("grad_accumulation", 1)
    if accumulation < 1:
        raise ValueError(f"train.grad_accumulation={accumulation} must be >= 1")
    adamw = optax.adamw(learning_rate_schedule(train_config), b1=train_config.get("b1", 0.9),
                        b2=train_config.get("b2", 0.95),
                        weight_decay=train_config.weight_decay, mask=_decay_mask)
    clip = train_config.get("grad_clip", 1.0)
    tx = optax.chain(optax.clip_by_global_norm(clip), adamw) if clip > 0 else adamw
    if accumulation > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accumulation).gradient_transformation()
    return tx
