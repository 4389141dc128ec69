"""pairwise_cosine against a NumPy loop, both Gram paths, zero vectors, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from moejax.kernels import pairwise_cosine
from tests.reference import cosine


@pytest.mark.parametrize("k", [2, 4, 6])  # 2 and 4: broadcast path; 6: einsum path
def test_matches_loop(k):
    z = np.random.default_rng(k).normal(size=(13, k, 7)).astype(np.float32)
    z[0, 1] = 0.0  # a dropped slot's activation
    out = np.asarray(pairwise_cosine(jnp.asarray(z)), np.float64)
    want = np.array([[[cosine(z[t, i].astype(np.float64), z[t, j].astype(np.float64))
                       for j in range(k)] for i in range(k)] for t in range(13)])
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    assert out[0, 1, 1] == 0.0


@pytest.mark.parametrize("k", [3, 6])
def test_gradients(k):
    with jax.enable_x64(True):
        z = jnp.asarray(np.random.default_rng(1).normal(size=(5, k, 4)))
        check_grads(pairwise_cosine, (z,), order=1, modes=["rev"])
        zero = z.at[0, 0].set(0.0)
        assert np.isfinite(np.asarray(jax.grad(lambda z: pairwise_cosine(z).sum())(zero))).all()


def test_bfloat16_input_gives_float32():
    z = jnp.asarray(np.random.default_rng(2).normal(size=(4, 2, 8)), jnp.bfloat16)
    assert pairwise_cosine(z).dtype == jnp.float32
