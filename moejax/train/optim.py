"""The optax chain: gradient clipping, AdamW with warmup + cosine decay.

Weight decay applies to matrices only (ndim >= 2): norms, biases and the shared-expert mix
bias are not decayed. Gradient accumulation is the train step's (`step.py`), not optax's.
"""

from __future__ import annotations

import functools

import jax
import optax

from moejax.train.specs import TrainSpec


def learning_rate_schedule(train: TrainSpec) -> optax.Schedule:
    """Linear warmup to `learning_rate`, cosine decay to `learning_rate * min_lr_ratio`."""
    return _schedule(train.learning_rate, train.warmup_steps, train.steps, train.min_lr_ratio)


def _schedule(learning_rate, warmup_steps, steps, min_lr_ratio) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
        decay_steps=max(steps, warmup_steps + 1), end_value=learning_rate * min_lr_ratio)


def _decay_mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(train: TrainSpec) -> optax.GradientTransformation:
    """The optimizer of `config.train`.

    Equal optimizer fields give the same (stateless) transformation object, so the jitted
    train step, whose cache key includes it, compiles once for runs that differ only in their
    seed or in options the optimizer does not read.
    """
    return _optimizer(train.learning_rate, train.warmup_steps, train.steps, train.min_lr_ratio,
                      train.weight_decay, train.b1, train.b2, train.grad_clip)


@functools.lru_cache(maxsize=32)
def _optimizer(learning_rate, warmup_steps, steps, min_lr_ratio, weight_decay, b1, b2,
               grad_clip):
    schedule = _schedule(learning_rate, warmup_steps, steps, min_lr_ratio)
    adamw = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=_decay_mask)
    return optax.chain(optax.clip_by_global_norm(grad_clip), adamw) if grad_clip > 0 else adamw
