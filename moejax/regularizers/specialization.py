"""Intra-layer specialization loss (arXiv 2602.14159, Eq. 4; reconstructed,
docs/methods.md section 5).

For each router and token, over the k routed experts the token activated:
`R_sp = mean_routers mean_{(t, e, v) kept} cos(z_e(x_t), z_v(x_t))^2`, the mean over every
ordered pair e != v of experts that token t activated and whose slots were kept (a slot
dropped by capacity has z = 0 and no cosine; without drops this is mean_t 1/(k(k-1)) sum).
z is the SwiGLU activation (input of the down projection). Squared cosine by default
(`mode="square"`, pushes towards orthogonal); `mode="abs"` uses |cos|. No gate weighting;
gradients reach both experts and x. It needs k >= 2. Computed in float32, or float64 for
float64 inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.kernels import pairwise_cosine as kernel_pairwise_cosine
from moejax.layers.dtypes import at_least_float32
from moejax.options import check_choice
from moejax.record import token_subset
from moejax.regularizers._routers import mean_over_routers, with_router_axis

MODES = ("square", "abs")


def _check_mode(mode):
    check_choice("mode", mode, MODES)


def kept_pair_sums(cos, top_k=None, mode="square"):
    """Per-token sums over kept pairs: (sum of the penalty [R, T], number of pairs [R, T]).

    A pair (i, j), i != j, counts when both slots are among the router's true top_k (K may
    be padded) and both were kept: a dropped slot's activation is the zero vector, whose
    cosine with everything, itself included, is 0, so a slot is kept where cos[t, j, j] = 1.

    Args:
      cos: [R, T, K, K] cosines.
      top_k: true k per router (int or [R]); default K.
      mode: "square" (cos^2) or "abs" (|cos|).
    """
    _check_mode(mode)
    routers, _, slots, _ = cos.shape
    k = jnp.broadcast_to(jnp.asarray(slots if top_k is None else top_k), (routers,))
    valid = jnp.arange(slots, dtype=k.dtype)[None, :] < k[:, None]  # [R, K]
    kept = (jnp.diagonal(cos, axis1=-2, axis2=-1) > 0.5) & valid[:, None, :]  # [R, T, K]
    pair = kept[..., :, None] & kept[..., None, :] & ~jnp.eye(slots, dtype=bool)
    penalty = cos**2 if mode == "square" else jnp.abs(cos)
    return (jnp.where(pair, penalty, 0.0).sum((-2, -1)),
            pair.sum((-2, -1)).astype(cos.dtype))


def specialization_loss_from_cosine(cos, *, top_k=None, mode="square", max_tokens=None):
    """The specialization loss from per-token cosine matrices (the blocks' `pair_cos`).

    Args:
      cos: [R, T, K, K] or [T, K, K] cosines between each token's chosen experts.
      top_k: true k per router (int or [R]) when K is padded; default K.
      mode: "square" (cos^2) or "abs" (|cos|).
      max_tokens: evaluate on a fixed, evenly spaced subset of this many tokens (the blocks
        may already have taken it: `MoESpec.cosine_max_tokens`).

    Returns:
      (mean over routers [], per-router values [R]): each router's mean over its kept pairs.
    """
    _check_mode(mode)
    cos = jnp.asarray(cos)
    cos = with_router_axis(cos.astype(at_least_float32(cos.dtype)), 3)
    if cos.shape[2] < 2:
        raise ValueError(f"the specialization loss needs top_k >= 2 experts per token, got "
                         f"{cos.shape[2]}")
    subset = token_subset(cos.shape[1], max_tokens)
    if subset is not None:
        cos = cos[:, subset]
    summed, pairs = kept_pair_sums(cos, top_k, mode)
    return mean_over_routers(summed.sum(-1) / jnp.maximum(pairs.sum(-1), 1.0))


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
