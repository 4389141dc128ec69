"""grouped_matmul against a NumPy loop over groups."""

import jax.numpy as jnp
import numpy as np

from moejax.kernels import grouped_matmul


def test_matches_loop_with_empty_groups():
    rng = np.random.default_rng(0)
    sizes = np.array([3, 0, 5, 1], np.int32)
    lhs = rng.normal(size=(int(sizes.sum()), 6)).astype(np.float32)
    rhs = rng.normal(size=(4, 6, 5)).astype(np.float32)
    out = np.asarray(grouped_matmul(jnp.asarray(lhs), jnp.asarray(rhs), jnp.asarray(sizes)))
    start = 0
    for group, size in enumerate(sizes):
        want = lhs[start:start + size].astype(np.float64) @ rhs[group]
        np.testing.assert_allclose(out[start:start + size], want, rtol=1e-5, atol=1e-5)
        start += size
