"""moejax/regularizers/coupling.py against the float64 NumPy oracle (docs/methods.md section 5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from moejax.regularizers import coupling_loss, topk_mass
from tests.regularizers.reference_losses import coupling as cp_ref
from tests.regularizers.reference_losses import topk_mass as mass_ref
from tests.regularizers.regularizer_inputs import (
    PADDED_SHAPES,
    R,
    assert_directional,
    central_difference,
    check_mean_and_per_router,
    float64_direction,
    random_routers,
    stack,
)


@pytest.mark.parametrize("form", ["product", "log"])
def test_matches_reference_stacked(form):
    routers = random_routers(40)
    values = coupling_loss(stack(routers.probs), stack(routers.expert_idx), form=form)
    assert values[1].shape == (R - 1,)
    check_mean_and_per_router(values, cp_ref(routers.probs, routers.expert_idx, form=form))


@pytest.mark.parametrize("form", ["product", "log"])
def test_padded_record_matches_reference(form):
    routers = random_routers(41, shapes=PADDED_SHAPES)
    record = routers.record
    values = coupling_loss(record.probs, record.expert_idx, form=form)
    check_mean_and_per_router(values, cp_ref(routers.probs, routers.expert_idx, form=form))


def test_topk_mass_ignores_padded_choices():
    routers = random_routers(42, shapes=PADDED_SHAPES)
    mass = np.asarray(topk_mass(routers.record.probs, routers.record.expert_idx))
    for r in range(R):
        np.testing.assert_allclose(mass[r], mass_ref(routers.probs[r], routers.expert_idx[r]),
                                   rtol=1e-6)


def test_stop_gradient_deeper_keeps_the_value():
    routers = random_routers(43)
    probs, idx = stack(routers.probs), stack(routers.expert_idx)
    for form in ("product", "log"):
        np.testing.assert_allclose(
            np.asarray(coupling_loss(probs, idx, form=form, stop_gradient_deeper=True)[1]),
            np.asarray(coupling_loss(probs, idx, form=form)[1]), rtol=1e-6)


@pytest.mark.parametrize("form", ["product", "log"])
def test_stop_gradient_deeper_has_no_gradient_into_the_deeper_router(form):
    routers = random_routers(44, shapes=((6, 3), (6, 3)))
    probs, idx = stack(routers.probs), stack(routers.expert_idx)
    stopped = jax.grad(lambda p: coupling_loss(p, idx, form=form,
                                               stop_gradient_deeper=True)[0])(probs)
    plain = jax.grad(lambda p: coupling_loss(p, idx, form=form)[0])(probs)
    assert float(jnp.abs(stopped[1]).max()) == 0.0
    assert float(jnp.abs(plain[1]).max()) > 0.0
    np.testing.assert_allclose(np.asarray(stopped[0]), np.asarray(plain[0]), rtol=1e-6)


def test_stop_gradient_deeper_matches_teacher_reference():
    """R = 3: each router gets gradient only as the shallow member of its pair."""
    routers = random_routers(45)
    idx = stack(routers.expert_idx)
    probs64 = np.stack(routers.probs).astype(np.float64)
    with jax.enable_x64(True):
        @jax.jit
        def loss(p):
            return coupling_loss(p, idx, stop_gradient_deeper=True)[0]

        grad = np.asarray(jax.grad(loss)(jnp.asarray(probs64)))
    assert np.abs(grad[R - 1]).max() == 0.0
    direction = float64_direction(45, probs64.shape)
    fd = central_difference(
        lambda p: cp_ref(list(p), routers.expert_idx, teacher_probs=list(probs64))[0],
        probs64, direction)
    assert_directional(grad, direction, fd)


@pytest.mark.parametrize("form", ["product", "log"])
def test_invariant_to_relabelling_each_routers_experts(form):
    routers = random_routers(46)
    rng = np.random.default_rng(46)
    probs, idx = [], []
    for p, i in zip(routers.probs, routers.expert_idx):
        perm = rng.permutation(p.shape[1])  # new column j holds old expert perm[j]
        inverse = np.argsort(perm)
        probs.append(p[:, perm])
        idx.append(inverse[i].astype(np.int32))
    original = coupling_loss(stack(routers.probs), stack(routers.expert_idx), form=form)
    relabelled = coupling_loss(stack(probs), stack(idx), form=form)
    np.testing.assert_allclose(np.asarray(relabelled[1]), np.asarray(original[1]), rtol=1e-6)


def test_needs_two_routers():
    routers = random_routers(47, shapes=((6, 3),))
    with pytest.raises(ValueError, match=">= 2 routers"):
        coupling_loss(stack(routers.probs), stack(routers.expert_idx))
    with pytest.raises(ValueError, match=">= 2 routers"):
        coupling_loss(jnp.asarray(routers.probs[0]), jnp.asarray(routers.expert_idx[0]))


def test_rejects_unknown_form():
    routers = random_routers(48)
    with pytest.raises(ValueError, match="form='square'"):
        coupling_loss(stack(routers.probs), stack(routers.expert_idx), form="square")


@pytest.mark.parametrize("form", ["product", "log"])
def test_gradient_matches_finite_differences(form):
    routers = random_routers(49)
    idx = stack(routers.expert_idx)
    probs64 = np.stack(routers.probs).astype(np.float64)
    with jax.enable_x64(True):
        @jax.jit
        def loss(p):
            return coupling_loss(p, idx, form=form)[0]

        check_grads(loss, (jnp.asarray(probs64),), order=1, modes=["rev"])
        grad = jax.grad(loss)(jnp.asarray(probs64))
    direction = float64_direction(49, probs64.shape)
    fd = central_difference(lambda p: cp_ref(list(p), routers.expert_idx, form=form)[0],
                            probs64, direction)
    assert_directional(grad, direction, fd)


def test_float64_in_float64_out_and_exact():
    """float64 probabilities are not rounded through float32: the value equals the float64
    reference to 1e-12 (float32 math would be off by about 1e-8)."""
    routers = random_routers(50)
    probs64 = np.stack(routers.probs).astype(np.float64)
    with jax.enable_x64(True):
        mean, per_pair = coupling_loss(jnp.asarray(probs64), stack(routers.expert_idx))
        assert mean.dtype == per_pair.dtype == jnp.float64
        want = cp_ref(list(probs64), routers.expert_idx)[0]
        np.testing.assert_allclose(float(mean), want, rtol=1e-12)
