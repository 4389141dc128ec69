"""The optax chain: gradient clipping, AdamW with warmup and a cosine or WSD decay.

The learning rate rises linearly over `train.warmup_steps`, then follows `train.schedule`
("cosine", or "wsd": warmup-stable-decay) down to `learning_rate * min_lr_ratio` at step
`train.decay_steps` (the decay horizon), and holds that value after it. The horizon is apart
from `train.steps`: `resolve_decay_steps` fixes it when a run starts (None: the `train.steps`
of the run that started the workdir, read from its checkpoints' config), so extending a run
on resume changes no step's learning rate (TrainSpec's docstring).

Weight decay applies to matrices only (ndim >= 2): norms, biases and the shared-expert mix
bias are not decayed. Gradient accumulation is the train step's (`step.py`), not optax's.

bfloat16 parameters (`model.param_dtype`) train with float32 master weights by default
(`train.master_weights`, `specs.uses_master_weights`): `MasterWeightsOptimizer` keeps them
in its state, with the moments, and writes them back to the model rounded.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.nnx.training.optimizer import to_opt_state

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


def _float32(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float32), tree)


class MasterWeightsOptimizer(nnx.Optimizer):
    """An `nnx.Optimizer` whose state keeps float32 master weights of the model's (bfloat16)
    parameters: `master` (the parameters' structure and shardings, float32) beside the optax
    state, which is built on the master weights (float32 moments).

    `update(model, grads)` casts the gradients to float32, runs the optax chain on the master
    weights, adds the float32 update to them and sets each parameter to its master weight
    rounded to the parameter's dtype (round to nearest even): an update smaller than half a
    bfloat16 step changes the master weight, and the parameter once the changes add up.
    Checkpoints save and restore `master` with the rest of `nnx.state(optimizer)`.
    """

    def __init__(self, model, tx: optax.GradientTransformation, *, wrt=nnx.Param, master=None):
        """master: the float32 master weights, a State of `nnx.state(model, wrt)`'s structure
        (e.g. the float32 init the parameters were rounded from); None: the parameters."""
        master = _float32(nnx.state(model, wrt) if master is None else master)
        super().__init__(master, tx, wrt=wrt)  # the optax state of the float32 weights
        self.master = nnx.data(to_opt_state(master))

    def update(self, model, grads, /, **kwargs):
        """Updates the master weights, the optax state and the model's parameters (the master
        weights rounded); returns the float32 updates."""
        params = nnx.as_pure(nnx.state(model, self.wrt))
        grads = _float32(nnx.as_pure(nnx.state(grads, self.wrt)))
        master = nnx.as_pure(self.master)
        updates, opt_state = self.tx.update(grads, nnx.as_pure(self.opt_state), master,
                                            **nnx.as_pure(kwargs))
        master = optax.apply_updates(master, updates)
        nnx.update(model, rounded(master, params))
        nnx.update(self.master, nnx.state(master))
        nnx.update(self.opt_state, nnx.state(opt_state))
        self.step[...] += 1
        return updates

    def reset_master(self, model) -> None:
        """Master weights := the model's parameters (after weights were loaded into it)."""
        nnx.update(self.master, nnx.state(_float32(nnx.as_pure(nnx.state(model, self.wrt)))))


def rounded(master, params):
    """Each master weight cast to its parameter's dtype: the model's parameters."""
    return jax.tree.map(lambda m, p: m.astype(p.dtype), master, params)


def sync_master_weights(optimizer: nnx.Optimizer, model) -> None:
    """After weights were loaded into `model`: a `MasterWeightsOptimizer` restarts its master
    weights from them; any other optimizer is left as it is."""
    if isinstance(optimizer, MasterWeightsOptimizer):
        optimizer.reset_master(model)


def state_bytes_per_parameter(param_dtype: str, master_weights: bool) -> tuple[int, int]:
    """(bytes of a parameter, bytes of its optimizer state): AdamW's two moments in the
    parameters' dtype, or the float32 master weight and float32 moments."""
    itemsize = jnp.dtype(param_dtype).itemsize
    return itemsize, 3 * 4 if master_weights else 2 * itemsize
