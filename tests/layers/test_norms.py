"""RMSNorm against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from moejax.layers.norms import rms_norm
from tests.reference import rms_norm_ref


def test_rms_norm_matches_reference_and_gradients():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 13)).astype(np.float32)
    w = rng.uniform(0.5, 1.5, 13).astype(np.float32)
    out = rms_norm(jnp.asarray(x), jnp.asarray(w), 1e-5)
    np.testing.assert_allclose(np.asarray(out, np.float64), rms_norm_ref(x, w), rtol=1e-5)
    with jax.enable_x64(True):
        check_grads(lambda x, w: rms_norm(x, w, 1e-5),
                    (jnp.asarray(x, jnp.float64), jnp.asarray(w, jnp.float64)), order=1,
                    modes=["rev"])


def test_bfloat16_keeps_dtype():
    x = jnp.ones((3, 8), jnp.bfloat16) * 3
    out = rms_norm(x, jnp.ones((8,), jnp.float32), 1e-5)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), 1.0, rtol=1e-2)
