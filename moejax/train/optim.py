"""The optax chain: gradient clipping, AdamW with warmup and a cosine or WSD decay.

The learning rate rises linearly over `train.warmup_steps`, then follows `train.schedule`
("cosine", or "wsd": warmup-stable-decay) down to `learning_rate * min_lr_ratio` at step
`train.decay_steps` (the decay horizon), and holds that value after it. The horizon is apart
from `train.steps`: `resolve_decay_steps` fixes it when a run starts (None: the `train.steps`
of the run that started the workdir, read from its checkpoints' config), so extending a run
on resume changes no step's learning rate (TrainSpec's docstring).

Weight decay applies to matrices only (ndim >= 2): norms, biases and the shared-expert mix
bias are not decayed. Gradient accumulation is the train step's (`step.py`), not optax's.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import optax

from moejax.train.specs import TrainSpec


def decay_horizon(train: TrainSpec) -> int:
    """The step at which the decay ends: `train.decay_steps`, else `train.steps`."""
    return train.decay_steps if train.decay_steps is not None else train.steps


def learning_rate_schedule(train: TrainSpec) -> optax.Schedule:
    """Linear warmup to `learning_rate`, then `train.schedule` down to `learning_rate *
    min_lr_ratio` at `decay_horizon(train)`, held after it."""
    return _schedule(train.learning_rate, train.warmup_steps, train.min_lr_ratio,
                     train.schedule, decay_horizon(train), train.cooldown_steps)


def resolve_decay_steps(train: TrainSpec, saved_config: dict | None) -> TrainSpec:
    """`train` with its decay horizon fixed for this run.

    An explicit `train.decay_steps` is kept. Otherwise a fresh run (`saved_config` None)
    decays over its own `train.steps`, and a resumed one over the horizon of the run that
    started the workdir: the checkpoints' `train.decay_steps`, or their `train.steps` when
    they were written before the option existed. A resume whose `train.steps` goes past that
    horizon is warned about: the steps after it hold the final learning rate.

    Args:
      train: this run's TrainSpec.
      saved_config: the config (plain JSON dict) the workdir's checkpoints were written with,
        or None for a fresh run.
    """
    if train.decay_steps is not None:
        return train
    saved = (saved_config or {}).get("train") or {}
    horizon = int(saved.get("decay_steps") or saved.get("steps") or train.steps)
    if saved_config is not None and train.steps > horizon:
        final = train.learning_rate * train.min_lr_ratio
        logging.getLogger(__name__).warning(
            "train.steps=%d goes past the learning-rate schedule's decay_steps=%d, kept from "
            "the run that started this workdir: steps %d-%d train at the final learning rate "
            "%.3g (learning_rate * min_lr_ratio); set train.decay_steps to lay the decay over "
            "another horizon", train.steps, horizon, horizon + 1, train.steps, final)
    return dataclasses.replace(train, decay_steps=horizon)


def _schedule(learning_rate, warmup_steps, min_lr_ratio, kind, horizon,
              cooldown_steps) -> optax.Schedule:
    end_value = learning_rate * min_lr_ratio
    if kind == "wsd":
        cooldown = cooldown_steps if cooldown_steps is not None else max(1, round(horizon / 5))
        decay_start = max(warmup_steps, horizon - cooldown)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1)),
             optax.constant_schedule(learning_rate),
             optax.linear_schedule(learning_rate, end_value, max(horizon - decay_start, 1))],
            boundaries=[warmup_steps, decay_start])
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
        decay_steps=max(horizon, warmup_steps + 1), end_value=end_value)


def _decay_mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(train: TrainSpec) -> optax.GradientTransformation:
    """The optimizer of `config.train`.

    Equal optimizer fields give the same (stateless) transformation object, so the jitted
    train step, whose cache key includes it, compiles once for runs that differ only in their
    seed or in options the optimizer does not read.
    """
    return _optimizer(train.learning_rate, train.warmup_steps, train.min_lr_ratio,
                      train.schedule, decay_horizon(train), train.cooldown_steps,
                      train.weight_decay, train.b1, train.b2, train.grad_clip)


@functools.lru_cache(maxsize=32)
def _optimizer(learning_rate, warmup_steps, min_lr_ratio, kind, horizon, cooldown_steps,
               weight_decay, b1, b2, grad_clip):
    schedule = _schedule(learning_rate, warmup_steps, min_lr_ratio, kind, horizon,
                         cooldown_steps)
    adamw = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=_decay_mask)
    return optax.chain(optax.clip_by_global_norm(grad_clip), adamw) if grad_clip > 0 else adamw
