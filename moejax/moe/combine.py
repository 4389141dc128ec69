"""Combine: per-slot expert outputs back to one vector per token, and shared-expert mixing."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def combine(y_slots: jax.Array, gates: jax.Array, kept: jax.Array) -> jax.Array:
    """y_t = sum_j g_tj * kept_tj * y_slots_tj.

    Args:
      y_slots: [T, K, D] expert outputs in the compute dtype.
      gates: [T, K] float32 gates.
      kept: [T, K] bool, False for dropped slots.

    Returns:
      [T, D] in y_slots's dtype.
    """
    weights = jnp.where(kept, gates, jnp.zeros_like(gates)).astype(y_slots.dtype)
    return jnp.einsum("TKD,TK->TD", y_slots, weights)


def mix_shared(routed: jax.Array, shared: jax.Array, mix_logits: jax.Array | None = None):
    """Adds the shared experts' output to the routed one.

    Args:
      routed: [T, D] routed-expert output.
      shared: [T, D] shared-expert output.
      mix_logits: [T, 2] logits of the learned 2-way mix c = softmax(...) (CartesianMoE),
        or None for a plain sum (DeepSeekMoE).

    Returns:
      [T, D]: routed + shared, or c0 * routed + c1 * shared.
    """
    if mix_logits is None:
        return routed + shared
    mix = jax.nn.softmax(mix_logits, axis=-1).astype(routed.dtype)
    return mix[:, :1] * routed + mix[:, 1:] * shared
