"""Optimizer: schedule shape, no decay on norms/biases, one object per optimizer setting."""

import jax.numpy as jnp
import numpy as np

from moejax.train.optim import learning_rate_schedule, make_optimizer
from moejax.train.specs import TrainSpec


def _config(**overrides):
    fields = dict(learning_rate=1e-2, warmup_steps=10, steps=100, min_lr_ratio=0.1,
                  weight_decay=0.5, b1=0.9, b2=0.95, grad_clip=0.0)
    return TrainSpec(**{**fields, **overrides})


def test_schedule_warms_up_then_decays():
    schedule = learning_rate_schedule(_config())
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(10)), 1e-2, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(100)), 1e-3, rtol=1e-5)
    assert float(schedule(50)) < 1e-2


def test_weight_decay_skips_vectors():
    params = {"kernel": jnp.ones((2, 3)), "norm": jnp.ones((3,))}
    zero = {k: jnp.zeros_like(v) for k, v in params.items()}
    # zero gradients: the only update is the decoupled weight decay
    tx = make_optimizer(_config(learning_rate=1.0, warmup_steps=0))
    state = tx.init(params)
    updates, _ = tx.update(zero, state, params)
    assert np.all(np.asarray(updates["kernel"]) < 0)
    np.testing.assert_array_equal(updates["norm"], 0.0)


def test_equal_settings_share_one_transformation():
    """The jitted train step's cache key includes the optimizer: runs that differ only in
    their seed must get the same object, runs with other settings another one."""
    assert make_optimizer(_config()) is make_optimizer(_config())
    assert make_optimizer(_config()) is not make_optimizer(_config(learning_rate=2e-2))
    assert make_optimizer(_config()) is make_optimizer(_config(report=True, log_every=3))
