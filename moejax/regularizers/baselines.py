"""Paper A's comparison losses (Guo et al. 2025, arXiv 2505.22323; reconstructed).

- Orthogonality: the squared cosine of co-activated experts' *outputs* `FFN_e(x_t)` over each
  token's chosen pairs; the same reduction as the specialization loss, on outputs instead of
  SwiGLU activations (blocks record it with `cosine_source="output"`).
- Score variance: `-mean_t Var_e s_te`, rewarding decisive router distributions.
"""

from __future__ import annotations

import jax.numpy as jnp

from moejax.regularizers._routers import experts_per_router, mean_over_routers, with_router_axis
from moejax.regularizers.specialization import pairwise_cosine, specialization_loss_from_cosine


def orthogonality_loss(expert_out, *, max_tokens=None):
    """Squared cosine of co-activated experts' outputs.

    Args:
      expert_out: [R, T, K, D] or [T, K, D] outputs of each token's K chosen experts.
      max_tokens: evaluate on a fixed, evenly spaced subset of this many tokens.

    Returns:
      (mean over routers [], per-router values [R]).
    """
    expert_out = with_router_axis(jnp.asarray(expert_out), 3)
    return specialization_loss_from_cosine(pairwise_cosine(expert_out), max_tokens=max_tokens)


def score_variance_loss(probs, *, num_experts=None):
    """-mean_t Var_e s_te over each router's true experts.

    Args:
      probs: [R, T, E] or [T, E] router distributions (padded experts must be 0).
      num_experts: true E per router (int or [R]) when E is padded.

    Returns:
      (mean over routers [], per-router values [R]).
    """
    probs = with_router_axis(jnp.asarray(probs, jnp.float32), 2)
    num_e = experts_per_router(num_experts, probs)[:, None]  # [R, 1]
    valid = jnp.arange(probs.shape[-1], dtype=jnp.float32)[None, None, :] < num_e[:, :, None]
    mean = probs.sum(-1) / num_e
    variance = jnp.where(valid, (probs - mean[..., None]) ** 2, 0.0).sum(-1) / num_e
    return mean_over_routers(-variance.mean(-1))
