"""The optax chain: gradient clipping, AdamW with warmup + cosine decay, accumulation.

Weight decay applies to matrices only (ndim >= 2): norms, biases and the shared-expert mix
bias are not decayed.
"""

from __future__ import annotations

import functools

import jax
import optax


def learning_rate_schedule(train_config) -> optax.Schedule:
    """Linear warmup to `learning_rate`, cosine decay to `learning_rate * min_lr_ratio`."""
    return _schedule(**_schedule_fields(train_config))


def _schedule_fields(train_config) -> dict:
    return dict(learning_rate=train_config.learning_rate, warmup_steps=train_config.warmup_steps,
                steps=train_config.steps, min_lr_ratio=train_config.get("min_lr_ratio", 0.1))


def _schedule(learning_rate, warmup_steps, steps, min_lr_ratio) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
        decay_steps=max(steps, warmup_steps + 1), end_value=learning_rate * min_lr_ratio)


def _decay_mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(train_config) -> optax.GradientTransformation:
    """The optimizer of `config.train`.

    Fields read: learning_rate, warmup_steps, steps, min_lr_ratio, weight_decay, b1, b2,
    grad_clip (global norm; 0 = off), grad_accumulation (micro-steps per update).
    Equal fields give the same (stateless) transformation object, so the jitted train step,
    whose cache key includes it, compiles once for runs that differ only in their seed.
    """
    return _optimizer(
        **_schedule_fields(train_config),
        weight_decay=train_config.weight_decay, b1=train_config.get("b1", 0.9),
        b2=train_config.get("b2", 0.95), grad_clip=train_config.get("grad_clip", 1.0),
        grad_accumulation=train_config.get("grad_accumulation", 1))


@functools.lru_cache(maxsize=32)
def _optimizer(*, learning_rate, warmup_steps, steps, min_lr_ratio, weight_decay, b1, b2,
               grad_clip, grad_accumulation):
    if grad_accumulation < 1:
        raise ValueError(f"train.grad_accumulation={grad_accumulation} must be >= 1")
    schedule = _schedule(learning_rate, warmup_steps, steps, min_lr_ratio)
    adamw = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=_decay_mask)
    tx = optax.chain(optax.clip_by_global_norm(grad_clip), adamw) if grad_clip > 0 else adamw
    if grad_accumulation > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=grad_accumulation).gradient_transformation()
    return tx
