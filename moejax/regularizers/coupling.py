"""Cross-layer coupling loss (arXiv 2602.14159, Eq. 7; reconstructed, docs/methods.md section 5).

With `s^l` the pre-top-k distribution of router l (`RoutingRecord.probs`) and
`P_t^l = sum_{e in TopK_t^l} s^l_te` its top-k mass,
`R_cp = -mean_{l=1..L-1} mean_t P_t^l P_t^{l+1}` over adjacent routers in depth order.
Options: `form="log"` gives `-mean log(P^l P^{l+1})`; `stop_gradient_deeper` treats
router l+1 as a fixed teacher (unconfirmed in the paper). Computed in float32, or float64 for
float64 inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.layers.dtypes import at_least_float32
from moejax.options import check_choice
from moejax.regularizers._routers import mean_over_routers, with_router_axis

FORMS = ("product", "log")


def topk_mass(probs, expert_idx):
    """P [R, T]: sum of probs over the chosen experts (-1 entries ignored).

    Args:
      probs: [R, T, E] float.
      expert_idx: [R, T, K] int.
    """
    picked = jnp.take_along_axis(probs, jnp.maximum(expert_idx, 0), axis=-1)
    return jnp.where(expert_idx >= 0, picked, 0.0).sum(-1)


def coupling_loss(probs, expert_idx, *, form="product", stop_gradient_deeper=False):
    """Cross-layer coupling of top-k mass between adjacent routers.

    Args:
      probs: [R, T, E] pre-top-k distributions of R >= 2 routers in depth order.
      expert_idx: [R, T, K] chosen experts (-1 entries are padding).
      form: "product" (-P^l P^{l+1}) or "log" (-log(P^l P^{l+1})).
      stop_gradient_deeper: no gradient through router l+1 in each pair.

    Returns:
      (mean over the R-1 adjacent pairs [], per-pair values [R-1]).
    """
    check_choice("form", form, FORMS)
    probs = jnp.asarray(probs)
    probs = with_router_axis(probs.astype(at_least_float32(probs.dtype)), 2)
    expert_idx = with_router_axis(jnp.asarray(expert_idx), 2)
    if probs.shape[0] < 2:
        raise ValueError(f"the coupling loss needs >= 2 routers in depth order, got "
                         f"{probs.shape[0]}")
    mass = topk_mass(probs, expert_idx)
    shallow, deep = mass[:-1], mass[1:]
    if stop_gradient_deeper:
        deep = jax.lax.stop_gradient(deep)
    if form == "product":
        values = -(shallow * deep).mean(-1)
    else:
        values = -(jnp.log(shallow + 1e-9) + jnp.log(deep + 1e-9)).mean(-1)
    return mean_over_routers(values)
