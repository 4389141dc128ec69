"""Optimizer: schedule shape, no decay on norms/biases, one object per optimizer setting."""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from moejax.train.optim import learning_rate_schedule, make_optimizer
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
