"""moejax/regularizers/baselines.py against the float64 NumPy oracle (docs/methods.md section 5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from moejax.regularizers import orthogonality_loss, score_variance_loss
from tests.regularizers.reference_losses import orthogonality as orth_ref
from tests.regularizers.reference_losses import score_variance as var_ref
from tests.regularizers.regularizer_inputs import (
    PADDED_SHAPES,
    F,
    K,
    R,
    T,
    assert_directional,
    central_difference,
    check_mean_and_per_router,
    float64_direction,
    random_routers,
    stack,
)


@pytest.mark.parametrize("max_tokens", [None, 11])
def test_orthogonality_matches_reference(max_tokens):
    outputs = random_routers(50).z  # [T, K, D] outputs of the chosen experts (D = F here)
    values = orthogonality_loss(stack(outputs), max_tokens=max_tokens)
    assert values[1].shape == (R,)
    check_mean_and_per_router(values, orth_ref(outputs, max_tokens=max_tokens))


def test_orthogonality_single_router_and_needs_two_experts():
    outputs = random_routers(51).z[0]
    mean, per_router = orthogonality_loss(jnp.asarray(outputs))
    assert per_router.shape == (1,)
    np.testing.assert_allclose(float(mean), orth_ref([outputs])[0], rtol=1e-5)
    with pytest.raises(ValueError, match="top_k >= 2"):
        orthogonality_loss(jnp.ones((T, 1, F), jnp.float32))


def test_score_variance_matches_reference():
    routers = random_routers(52)
    values = score_variance_loss(stack(routers.probs))
    check_mean_and_per_router(values, var_ref(routers.probs))


def test_score_variance_of_padded_record_matches_reference():
    routers = random_routers(53, shapes=PADDED_SHAPES)
    record = routers.record
    values = score_variance_loss(record.probs, num_experts=record.num_experts)
    check_mean_and_per_router(values, var_ref(routers.probs))
    unaware = score_variance_loss(record.probs)[1]  # padding counted as experts: wrong
    assert not np.allclose(np.asarray(unaware), var_ref(routers.probs)[1])


def test_score_variance_known_values():
    experts = 6
    uniform = jnp.full((T, experts), 1.0 / experts, jnp.float32)
    assert abs(float(score_variance_loss(uniform)[0])) < 1e-9
    one_hot = jax.nn.one_hot(jnp.arange(T) % experts, experts, dtype=jnp.float32)
    np.testing.assert_allclose(float(score_variance_loss(one_hot, num_experts=experts)[0]),
                               -(experts - 1) / experts**2, rtol=1e-6)


def test_orthogonality_gradient_matches_finite_differences():
    outputs64 = np.stack(random_routers(54).z).astype(np.float64)
    with jax.enable_x64(True):
        @jax.jit
        def loss(x):
            return orthogonality_loss(x)[0]

        check_grads(loss, (jnp.asarray(outputs64),), order=1, modes=["rev"])
        grad = np.asarray(jax.grad(loss)(jnp.asarray(outputs64)))
    direction = float64_direction(54, outputs64.shape)
    fd = central_difference(lambda x: orth_ref(list(x))[0], outputs64, direction)
    assert_directional(grad, direction, fd)
    assert grad.shape == (R, T, K, F)


def test_score_variance_gradient_matches_finite_differences():
    routers = random_routers(55, shapes=PADDED_SHAPES)
    record = routers.record
    probs64 = np.asarray(record.probs, np.float64)
    with jax.enable_x64(True):
        @jax.jit
        def loss(p):
            return score_variance_loss(p, num_experts=record.num_experts)[0]

        check_grads(loss, (jnp.asarray(probs64),), order=1, modes=["rev"])
        grad = np.asarray(jax.grad(loss)(jnp.asarray(probs64)))
    assert np.abs(grad[1, :, 4:]).max() < 1e-8  # padded experts: no gradient (up to rounding)
    direction = float64_direction(55, probs64.shape)
    direction[1, :, 4:] = 0.0
    direction[2, :, 5:] = 0.0

    def reference(p):
        return var_ref([p[0], p[1, :, :4], p[2, :, :5]])[0]

    assert_directional(grad, direction, central_difference(reference, probs64, direction))
