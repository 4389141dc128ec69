"""Directional finite-difference gradient check for pytrees of float64 parameters."""

import jax
import jax.numpy as jnp
import numpy as np


def assert_directional_derivative(loss, params, *, seed=0, eps=1e-6, rtol=1e-6):
    """jax.grad(loss) . v equals the central difference of loss along a random direction v.

    Args:
      loss: scalar function of `params` (float64 under jax.enable_x64).
      params: pytree of float64 arrays.
    """
    rng = np.random.default_rng(seed)
    direction = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), params)
    loss = jax.jit(loss)  # compiled: the loss once for both shifts, the gradient once
    grads = jax.jit(jax.grad(loss))(params)
    shifted = lambda s: jax.tree.map(lambda p, d: p + s * d, params, direction)  # noqa: E731
    numeric = (loss(shifted(eps)) - loss(shifted(-eps))) / (2 * eps)
    analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads),
                                                  jax.tree.leaves(direction)))
    np.testing.assert_allclose(float(analytic), float(numeric), rtol=rtol)
    assert abs(float(analytic)) > 1e-6, "a trivial direction cannot fail"
