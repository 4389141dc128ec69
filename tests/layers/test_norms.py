"""moejax/layers/norms.py against the float64 NumPy oracle (HF Mixtral RMSNorm)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.layers.norms import RMSNorm, rms_norm
from tests.reference_decoder import rms_norm_ref

SHAPE = (3, 5, 7)  # [B, S, D], awkward sizes
EPS = 1e-5


def _inputs(seed, scale=3.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=SHAPE) * scale
    weight = 1.0 + 0.5 * rng.normal(size=SHAPE[-1:])
    return x, weight


@pytest.mark.parametrize("eps", [EPS, 0.5])
def test_rms_norm_matches_reference(eps):
    x, weight = _inputs(0)
    out = rms_norm(jnp.asarray(x, jnp.float32), jnp.asarray(weight, jnp.float32), eps)
    assert out.dtype == jnp.float32 and out.shape == SHAPE
    np.testing.assert_allclose(np.asarray(out, np.float64), rms_norm_ref(x, weight, eps),
                               rtol=1e-5, atol=1e-6)


def test_rms_norm_bfloat16_keeps_dtype_and_stays_close():
    x, weight = _inputs(1, scale=200.0)
    x_bf16 = jnp.asarray(x, jnp.bfloat16)
    out = rms_norm(x_bf16, jnp.asarray(weight, jnp.float32), EPS)
    assert out.dtype == jnp.bfloat16
    expected = rms_norm_ref(np.asarray(x_bf16, np.float64), weight, EPS)
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=2e-2, atol=2e-2)


def test_rms_norm_module_owns_a_float32_weight():
    x, weight = _inputs(2)
    norm = RMSNorm(SHAPE[-1], eps=EPS)
    assert norm.weight[...].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(norm.weight[...]), np.ones(SHAPE[-1]))
    norm.weight[...] = jnp.asarray(weight, jnp.float32)
    out = norm(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(np.asarray(out, np.float64), rms_norm_ref(x, weight, EPS),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("wrt", ["x", "weight"])
def test_rms_norm_gradients_match_reference_finite_differences(wrt):
    """<grad, v> (float32, reverse mode) against a float64 central difference of the reference."""
    x, weight = _inputs(3)
    rng = np.random.default_rng(4)
    cotangent = rng.normal(size=SHAPE)
    direction = rng.normal(size=SHAPE if wrt == "x" else SHAPE[-1:])

    def scalar(x32, w32):
        return jnp.sum(jnp.asarray(cotangent, jnp.float32) * rms_norm(x32, w32, EPS))

    argnum = 0 if wrt == "x" else 1
    grad = jax.grad(scalar, argnums=argnum)(jnp.asarray(x, jnp.float32),
                                            jnp.asarray(weight, jnp.float32))

    def scalar_ref(step):
        dx, dw = (step * direction, 0.0) if wrt == "x" else (0.0, step * direction)
        return float((cotangent * rms_norm_ref(x + dx, weight + dw, EPS)).sum())

    step = 1e-6
    finite_difference = (scalar_ref(step) - scalar_ref(-step)) / (2 * step)
    terms = np.asarray(grad, np.float64) * direction
    assert abs(terms.sum() - finite_difference) <= 1e-4 * np.abs(terms).sum()


def test_rms_norm_is_usable_as_nnx_param_state():
    norm = RMSNorm(SHAPE[-1], eps=EPS)
    _, params = nnx.split(norm, nnx.Param)
    assert jax.tree.map(jnp.shape, nnx.to_pure_dict(params)) == {"weight": (SHAPE[-1],)}
