"""Router z-loss (ST-MoE): `L_z = mean_t (logsumexp_e r_te)^2`, averaged over routers."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.regularizers._routers import mean_over_routers, with_router_axis


def z_loss(logits):
    """Router z-loss.

    Args:
      logits: [R, T, E] or [T, E] router logits (-inf entries are padding).

    Returns:
      (mean over routers [], per-router values [R]).
    """
    logits = with_router_axis(jnp.asarray(logits, jnp.float32), 2)
    lse = jax.nn.logsumexp(logits, axis=-1)
    return mean_over_routers((lse**2).mean(-1))
