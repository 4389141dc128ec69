"""Intra-layer specialization loss (arXiv 2602.14159, Eq. 4; reconstructed,
docs/methods.md section 5).

For each router and token, over the k routed experts the token activated:
`R_sp = mean_routers mean_t 1/(k(k-1)) sum_{e != v in TopK_t} cos(z_e(x_t), z_v(x_t))^2`,
with z the SwiGLU activation (input of the down projection). Squared cosine by default
(`mode="square"`, pushes towards orthogonal); `mode="abs"` uses |cos|. No gate weighting;
gradients reach both experts and x. It needs k >= 2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.kernels import pairwise_cosine as kernel_pairwise_cosine
from moejax.regularizers._routers import mean_over_routers, with_router_axis

MODES = ("square", "abs")


def token_subset(num_tokens: int, max_tokens: int | None) -> jax.Array | None:
    """A fixed, evenly spaced subset of at most `max_tokens` of T token indices (or None)."""
    if max_tokens is None or max_tokens >= num_tokens:
        return None
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} must be >= 1")
    return jnp.asarray((jnp.arange(max_tokens) * num_tokens) // max_tokens, jnp.int32)


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; allowed: {', '.join(MODES)}")


def specialization_loss_from_cosine(cos, *, top_k=None, mode="square", max_tokens=None):
    """The specialization loss from per-token cosine matrices (the blocks' `pair_cos`).

    Args:
      cos: [R, T, K, K] or [T, K, K] cosines between each token's chosen experts.
      top_k: true k per router (int or [R]) when K is padded; default K.
      mode: "square" (cos^2) or "abs" (|cos|).
      max_tokens: evaluate on a fixed, evenly spaced subset of this many tokens.

    Returns:
      (mean over routers [], per-router values [R]).
    """
    _check_mode(mode)
    cos = with_router_axis(jnp.asarray(cos, jnp.float32), 3)
    routers, tokens, slots, _ = cos.shape
    if slots < 2:
        raise ValueError(f"the specialization loss needs top_k >= 2 experts per token, got {slots}")
    subset = token_subset(tokens, max_tokens)
    if subset is not None:
        cos = cos[:, subset]
    k = jnp.broadcast_to(jnp.asarray(slots if top_k is None else top_k), (routers,))
    valid = jnp.arange(slots, dtype=k.dtype)[None, :] < k[:, None]  # [R, K]
    pair = valid[:, :, None] & valid[:, None, :] & ~jnp.eye(slots, dtype=bool)
    penalty = cos**2 if mode == "square" else jnp.abs(cos)
    summed = jnp.where(pair[:, None], penalty, 0.0).sum((-2, -1))  # [R, T']
    pairs = (k * (k - 1)).astype(jnp.float32)
    return mean_over_routers(summed.mean(-1) / jnp.maximum(pairs, 1.0))


def pairwise_cosine(z: jax.Array) -> jax.Array:
    """[..., K, F] -> [..., K, K] cosines (zero vectors have cosine 0): the jnp reference of
    `kernels.pairwise_cosine` over any leading axes."""
    cos = kernel_pairwise_cosine(z.reshape(-1, *z.shape[-2:]), implementation="jnp")
    return cos.reshape(*z.shape[:-2], *cos.shape[-2:])


def specialization_loss(z, *, mode="square", max_tokens=None):
    """The specialization loss from the chosen experts' activations.

    Args:
      z: [R, T, K, F] or [T, K, F] SwiGLU activations of each token's K chosen experts.
      mode: "square" or "abs".
      max_tokens: evaluate on a fixed, evenly spaced subset of this many tokens.

    Returns:
      (mean over routers [], per-router values [R]).
    """
    _check_mode(mode)
    z = with_router_axis(jnp.asarray(z), 3)
    if z.shape[2] < 2:
        raise ValueError(f"the specialization loss needs top_k >= 2 experts per token, "
                         f"got {z.shape[2]}")
    subset = token_subset(z.shape[1], max_tokens)
    if subset is not None:
        z = z[:, subset]
    return specialization_loss_from_cosine(pairwise_cosine(z), mode=mode)
