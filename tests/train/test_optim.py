"""Optimizer: schedule shape, no decay on norms/biases, one object per optimizer setting; the
decay horizon apart from train.steps, kept on a resume."""

import math
import re

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from moejax.train.optim import learning_rate_schedule, make_optimizer, resolve_decay_steps
from moejax.train.specs import TrainSpec


def _config(**overrides):
    fields = dict(learning_rate=1e-2, warmup_steps=10, steps=100, min_lr_ratio=0.1,
                  weight_decay=0.5, b1=0.9, b2=0.95, grad_clip=0.0)
    return TrainSpec(**{**fields, **overrides})


def test_schedule_warms_up_linearly_then_decays_along_a_cosine():
    schedule = learning_rate_schedule(_config())
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(5)), 5e-3, rtol=1e-6)  # half way up
    np.testing.assert_allclose(float(schedule(10)), 1e-2, rtol=1e-6)
    progress = (32 - 10) / 90  # a quarter of the decay: cosine and linear differ by 10%
    cosine = 1e-3 + 0.5 * 9e-3 * (1 + math.cos(math.pi * progress))
    np.testing.assert_allclose(float(schedule(32)), cosine, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(100)), 1e-3, rtol=1e-5)


def test_weight_decay_is_decoupled_and_skips_vectors():
    params = {"kernel": jnp.full((2, 3), 2.0), "norm": jnp.ones((3,))}
    zero = {k: jnp.zeros_like(v) for k, v in params.items()}
    # zero gradients: the only update is the decoupled weight decay, -lr * wd * w
    tx = make_optimizer(_config(learning_rate=1.0, warmup_steps=0, steps=1000))
    state = tx.init(params)
    updates, _ = tx.update(zero, state, params)
    np.testing.assert_allclose(updates["kernel"], -0.5 * 2.0, rtol=1e-5)
    np.testing.assert_array_equal(updates["norm"], 0.0)


@pytest.mark.parametrize("clip, scale", [(1.0, 1.0 / 10.0), (0.0, 1.0), (20.0, 1.0)])
def test_grad_clip_bounds_the_global_norm(clip, scale):
    """Adam's first step is scale-free, so the clipping shows in its first moment."""
    params = {"a": jnp.zeros((2,)), "b": jnp.zeros((1,))}
    grads = {"a": jnp.asarray([6.0, 0.0]), "b": jnp.asarray([8.0])}  # global norm 10
    tx = make_optimizer(_config(grad_clip=clip, weight_decay=0.0))
    _, state = tx.update(grads, tx.init(params), params)
    mu = optax.tree_utils.tree_get(state, "mu")
    np.testing.assert_allclose(mu["a"], 0.1 * scale * np.asarray([6.0, 0.0]), rtol=1e-6)
    np.testing.assert_allclose(mu["b"], 0.1 * scale * np.asarray([8.0]), rtol=1e-6)


def test_equal_settings_share_one_transformation():
    """The jitted train step's cache key includes the optimizer: runs that differ only in
    their seed must get the same object, runs with other settings another one."""
    assert make_optimizer(_config()) is make_optimizer(_config())
    assert make_optimizer(_config()) is not make_optimizer(_config(learning_rate=2e-2))
    assert make_optimizer(_config()) is make_optimizer(_config(report=True, log_every=3))
    # the horizon, not train.steps: an extended run keeps its optimizer
    assert make_optimizer(_config()) is make_optimizer(_config(steps=130, decay_steps=100))


def test_decay_steps_sets_the_horizon_apart_from_steps_and_the_end_is_held():
    """A run of 30 steps over a 20-step horizon: steps 1..20 as in the 20-step run, then the
    final learning rate (not the cosine stretched over 30)."""
    planned = learning_rate_schedule(_config(steps=20, warmup_steps=2))
    extended = learning_rate_schedule(_config(steps=30, warmup_steps=2, decay_steps=20))
    np.testing.assert_allclose([float(extended(s)) for s in range(21)],
                               [float(planned(s)) for s in range(21)], rtol=1e-6)
    np.testing.assert_allclose([float(extended(s)) for s in range(20, 31)], 1e-3, rtol=1e-5)


def test_wsd_warms_up_holds_the_peak_then_decays_linearly():
    schedule = learning_rate_schedule(_config(schedule="wsd", warmup_steps=10, steps=100,
                                              cooldown_steps=20))
    np.testing.assert_allclose(float(schedule(5)), 5e-3, rtol=1e-6)
    np.testing.assert_allclose([float(schedule(s)) for s in (10, 50, 80)], 1e-2, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(90)), 1e-2 - 0.5 * 9e-3, rtol=1e-5)
    np.testing.assert_allclose([float(schedule(s)) for s in (100, 130)], 1e-3, rtol=1e-5)
    default = learning_rate_schedule(_config(schedule="wsd", warmup_steps=10, steps=100))
    assert float(default(80)) == pytest.approx(1e-2) and float(default(81)) < 1e-2  # a fifth


@pytest.mark.parametrize("saved, overrides, horizon", [
    (None, {}, 30),  # a fresh run: its own steps
    ({"train": {"steps": 20}}, {}, 20),  # written before the option: the steps it ran with
    ({"train": {"steps": 25, "decay_steps": 20}}, {}, 20),  # kept through earlier resumes
    ({"train": {"steps": 20, "decay_steps": 20}}, {"decay_steps": 40}, 40),  # told otherwise
])
def test_a_resume_keeps_the_horizon_of_the_run_that_started_it(saved, overrides, horizon,
                                                                 caplog):
    resolved = resolve_decay_steps(_config(steps=30, **overrides), saved)
    assert resolved.decay_steps == horizon
    past = saved is not None and not overrides
    assert ("steps 21-30 train at the final learning rate 0.001" in caplog.text) == past


@pytest.mark.parametrize("overrides, message", [
    ({"schedule": "linear"}, "train.schedule='linear'; allowed: cosine, wsd"),
    ({"decay_steps": 0}, "train.decay_steps=0; allowed: an integer >= 1, or None"),
    ({"cooldown_steps": 5}, "train.cooldown_steps=5 is the final decay of train.schedule='wsd'"),
])
def test_schedule_options_are_checked(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _config(**overrides)
