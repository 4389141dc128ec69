"""moejax/regularizers/specialization.py against the float64 NumPy oracle
(docs/methods.md section 5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from moejax.regularizers import specialization_loss, specialization_loss_from_cosine
from moejax.regularizers.specialization import pairwise_cosine, token_subset
from tests.regularizers.reference_losses import pair_cosines, subset
from tests.regularizers.reference_losses import specialization as sp_ref
from tests.regularizers.reference_losses import specialization_from_cosine as sp_cos_ref
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


@pytest.mark.parametrize("mode", ["square", "abs"])
@pytest.mark.parametrize("max_tokens", [None, 10])
def test_from_activations_matches_reference(mode, max_tokens):
    routers = random_routers(30)
    values = specialization_loss(stack(routers.z), mode=mode, max_tokens=max_tokens)
    assert values[1].shape == (R,)
    check_mean_and_per_router(values, sp_ref(routers.z, mode=mode, max_tokens=max_tokens))


@pytest.mark.parametrize("mode", ["square", "abs"])
@pytest.mark.parametrize("max_tokens", [None, 10])
def test_from_cosine_of_padded_record_matches_reference(mode, max_tokens):
    routers = random_routers(31, shapes=PADDED_SHAPES)
    record = routers.record
    values = specialization_loss_from_cosine(record.pair_cos, top_k=record.top_k, mode=mode,
                                             max_tokens=max_tokens)
    check_mean_and_per_router(values, sp_cos_ref(routers.cos, mode=mode, max_tokens=max_tokens))


def test_from_cosine_reads_only_each_routers_true_choices():
    routers = random_routers(39, shapes=PADDED_SHAPES)
    record = routers.record
    garbage = np.asarray(record.pair_cos).copy()
    garbage[1, :, 2:, :] = 0.9  # router 1 has K = 2: slots 2.. are padding
    garbage[1, :, :, 2:] = -0.7
    values = specialization_loss_from_cosine(jnp.asarray(garbage), top_k=record.top_k)
    check_mean_and_per_router(values, sp_cos_ref(routers.cos))


def test_max_tokens_is_the_evenly_spaced_subset():
    assert np.asarray(token_subset(T, 10)).tolist() == subset(T, 10)
    assert token_subset(T, T) is None and token_subset(T, T + 5) is None
    routers = random_routers(32)
    z = stack(routers.z)
    picked = z[:, np.asarray(subset(T, 10))]
    np.testing.assert_allclose(np.asarray(specialization_loss(z, max_tokens=10)[1]),
                               np.asarray(specialization_loss(picked)[1]), rtol=1e-6)
    assert not np.allclose(np.asarray(specialization_loss(z, max_tokens=10)[1]),
                           np.asarray(specialization_loss(z)[1]))
    np.testing.assert_allclose(np.asarray(specialization_loss(z, max_tokens=T)[1]),
                               np.asarray(specialization_loss(z)[1]), rtol=1e-6)
    with pytest.raises(ValueError, match="max_tokens=0"):
        specialization_loss(z, max_tokens=0)


def test_pairwise_cosine_matches_reference():
    z = random_routers(33).z[0]
    np.testing.assert_allclose(np.asarray(pairwise_cosine(jnp.asarray(z))), pair_cosines(z),
                               rtol=1e-5, atol=1e-6)


def test_from_activations_equals_from_their_cosine():
    z = stack(random_routers(34).z)
    np.testing.assert_allclose(np.asarray(specialization_loss(z)[1]),
                               np.asarray(specialization_loss_from_cosine(pairwise_cosine(z))[1]),
                               rtol=1e-6)


def _orthogonal_and_identical(seed):
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(T, F, F)))[0]  # per token an orthonormal basis
    scales = rng.uniform(0.5, 3.0, size=(T, K, 1))
    orthogonal = np.swapaxes(basis[:, :, :K], 1, 2) * scales
    identical = np.repeat(rng.normal(size=(T, 1, F)), K, axis=1) * scales
    return orthogonal.astype(np.float32), identical.astype(np.float32)


@pytest.mark.parametrize("mode", ["square", "abs"])
def test_orthogonal_is_zero_and_identical_is_one(mode):
    orthogonal, identical = _orthogonal_and_identical(35)
    assert float(specialization_loss(jnp.asarray(orthogonal), mode=mode)[0]) < 1e-6
    np.testing.assert_allclose(float(specialization_loss(jnp.asarray(identical), mode=mode)[0]),
                               1.0, rtol=1e-5)
    eye = jnp.broadcast_to(jnp.eye(K, dtype=jnp.float32), (T, K, K))
    ones = jnp.ones((T, K, K), jnp.float32)
    assert float(specialization_loss_from_cosine(eye, mode=mode)[0]) == 0.0
    np.testing.assert_allclose(float(specialization_loss_from_cosine(ones, mode=mode)[0]), 1.0,
                               rtol=1e-6)


def test_squared_cosine_penalises_anti_parallel_like_parallel():
    _, identical = _orthogonal_and_identical(36)
    flipped = identical * np.array([1.0, -1.0, 1.0], np.float32)[None, :, None]
    np.testing.assert_allclose(float(specialization_loss(jnp.asarray(flipped))[0]), 1.0,
                               rtol=1e-5)


def test_needs_two_experts_per_token():
    with pytest.raises(ValueError, match="top_k >= 2"):
        specialization_loss(jnp.ones((T, 1, F), jnp.float32))
    with pytest.raises(ValueError, match="top_k >= 2"):
        specialization_loss_from_cosine(jnp.ones((R, T, 1, 1), jnp.float32))


def test_rejects_unknown_mode():
    z = jnp.ones((T, K, F), jnp.float32)
    with pytest.raises(ValueError, match="mode='cube'"):
        specialization_loss(z, mode="cube")
    with pytest.raises(ValueError, match="mode='cube'"):
        specialization_loss_from_cosine(pairwise_cosine(z), mode="cube")


@pytest.mark.parametrize("mode", ["square", "abs"])
def test_gradient_matches_finite_differences(mode):
    routers = random_routers(37)
    z64 = np.stack(routers.z).astype(np.float64)
    with jax.enable_x64(True):
        z = jnp.asarray(z64)

        @jax.jit
        def loss(x):
            return specialization_loss(x, mode=mode, max_tokens=20)[0]

        check_grads(loss, (z,), order=1, modes=["rev"])
        check_grads(jax.jit(lambda c: specialization_loss_from_cosine(c, mode=mode)[0]),
                    (jnp.asarray(np.stack(routers.cos), jnp.float64),), order=1, modes=["rev"])
        grad = jax.grad(loss)(z)
    direction = float64_direction(37, z64.shape)
    fd = central_difference(lambda x: sp_ref(list(x), mode=mode, max_tokens=20)[0], z64,
                            direction)
    assert_directional(grad, direction, fd)
    # gradients reach every chosen expert of the evaluated tokens, none of the skipped tokens
    evaluated = np.asarray(subset(T, 20))
    norms = np.linalg.norm(np.asarray(grad), axis=-1)
    assert (norms[:, evaluated] > 0).all()
    assert (np.delete(norms, evaluated, axis=1) == 0).all()


def test_zero_activation_has_cosine_zero_and_finite_gradient():
    z = jnp.asarray(random_routers(38).z[0]).at[4, 1].set(0.0)
    cos = pairwise_cosine(z)
    assert float(jnp.abs(cos[4, 1]).max()) == 0.0
    grad = jax.grad(lambda x: specialization_loss(x)[0])(z)
    assert bool(jnp.isfinite(grad).all())
    assert float(jnp.abs(grad[4, 1]).max()) == 0.0


def test_dropped_slots_leave_the_mean():
    """A dropped slot (z = 0) adds no pairs: the mean is over kept pairs only (k=2 here, with
    the issue's 20 of 58 slots dropped; counting them as cosine 0 would dilute the value)."""
    rng = np.random.default_rng(5)
    z = rng.normal(size=(29, 2, F)) + 1.5 * rng.normal(size=(29, 1, F))  # correlated pairs
    kept = np.ones((29, 2), bool)
    kept[rng.choice(29, 20, replace=False), rng.integers(0, 2, 20)] = False
    z[~kept] = 0.0
    want = sp_ref(z[None], kept=kept[None])
    diluted = sp_ref(z[None])  # every pair counted, dropped ones with cosine 0
    assert want > 2 * diluted
    check_mean_and_per_router(specialization_loss(jnp.asarray(z, jnp.float32)), want)
    cos = pairwise_cosine(jnp.asarray(z, jnp.float32))
    check_mean_and_per_router(specialization_loss_from_cosine(cos), want)


def test_float64_in_float64_out():
    with jax.enable_x64(True):
        z = jnp.asarray(random_routers(32).z[0], jnp.float64)
        mean, per_router = specialization_loss(z)
        assert mean.dtype == per_router.dtype == jnp.float64
        mean, _ = specialization_loss_from_cosine(pairwise_cosine(z))
        assert mean.dtype == jnp.float64
