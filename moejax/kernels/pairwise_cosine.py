"""Per-token K x K cosine similarity of the chosen experts' activations z.

The quantity the intra-layer specialization loss reads (methods.md section 5). This is the
jnp implementation (normalise, then a batched Gram product, float32 accumulation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_EPS = 1e-12


def pairwise_cosine(z: jax.Array) -> jax.Array:
    """cos[t, i, j] = <z_ti, z_tj> / (|z_ti| |z_tj|).

    Args:
      z: [T, K, F] activations of each token's K chosen experts (any float dtype).

    Returns:
      [T, K, K] float32; a zero vector has cosine 0 with everything.
    """
    z = z.astype(jnp.float32)
    # sqrt of a clamped square norm: a zero vector gets cosine 0 and a zero (not NaN) gradient
    norm = jnp.sqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), _EPS**2))
    unit = z / norm
    return jnp.einsum("TKF,TJF->TKJ", unit, unit)
