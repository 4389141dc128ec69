"""moejax/regularizers/z_loss.py against the float64 NumPy oracle (docs/methods.md section 5)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from moejax.regularizers import z_loss
from tests.regularizers.reference_losses import z_loss as z_ref
from tests.regularizers.regularizer_inputs import (
    PADDED_SHAPES,
    R,
    T,
    assert_directional,
    central_difference,
    float64_direction,
    random_routers,
    stack,
)


def test_matches_reference_stacked():
    routers = random_routers(20)
    mean, per_router = z_loss(stack(routers.logits))
    ref_mean, ref_per_router = z_ref(routers.logits)
    assert per_router.shape == (R,)
    np.testing.assert_allclose(np.asarray(per_router), ref_per_router, rtol=1e-5)
    np.testing.assert_allclose(float(mean), ref_mean, rtol=1e-5)


def test_padded_record_matches_reference():
    routers = random_routers(21, shapes=PADDED_SHAPES)
    assert bool(jnp.isneginf(routers.record.logits).any())
    mean, per_router = z_loss(routers.record.logits)
    ref_mean, ref_per_router = z_ref(routers.logits)
    np.testing.assert_allclose(np.asarray(per_router), ref_per_router, rtol=1e-5)
    np.testing.assert_allclose(float(mean), ref_mean, rtol=1e-5)


def test_single_router_and_known_value():
    logits = jnp.zeros((T, 6), jnp.float32)  # logsumexp = log 6 for every token
    mean, per_router = z_loss(logits)
    assert per_router.shape == (1,)
    np.testing.assert_allclose(float(mean), math.log(6) ** 2, rtol=1e-6)


def test_rejects_wrong_rank():
    with pytest.raises(ValueError, match="dimensions"):
        z_loss(jnp.zeros((2, 3, 4, 5), jnp.float32))


def test_gradient_matches_finite_differences():
    routers = random_routers(22)
    with jax.enable_x64(True):
        logits = jnp.asarray(np.stack(routers.logits), jnp.float64)
        loss = jax.jit(lambda x: z_loss(x)[0])
        check_grads(loss, (logits,), order=1, modes=["rev"])
        grad = jax.grad(loss)(logits)
    direction = float64_direction(22, logits.shape)
    fd = central_difference(lambda x: z_ref(list(x))[0], np.stack(routers.logits), direction)
    assert_directional(grad, direction, fd)


def test_padded_gradient_is_finite_and_zero_on_padding():
    logits = random_routers(23, shapes=PADDED_SHAPES).record.logits
    grad = jax.grad(lambda x: z_loss(x)[0])(logits)
    assert bool(jnp.isfinite(grad).all())
    assert float(jnp.abs(grad[1, :, 4:]).max()) == 0.0
