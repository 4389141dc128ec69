"""Shared helpers: optional leading router axis, padding masks, per-router averaging."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def with_router_axis(x: jax.Array, ndim_without: int) -> jax.Array:
    """Adds a leading router axis of size 1 when x has `ndim_without` dimensions."""
    if x.ndim == ndim_without:
        return x[None]
    if x.ndim != ndim_without + 1:
        raise ValueError(f"expected {ndim_without} or {ndim_without + 1} dimensions, got shape "
                         f"{x.shape}")
    return x


def experts_per_router(num_experts, probs: jax.Array) -> jax.Array:
    """[R] float32 true expert counts: `num_experts` if given (int or [R]), else E of probs."""
    if num_experts is None:
        return jnp.full(probs.shape[:1], probs.shape[-1], jnp.float32)
    return jnp.broadcast_to(jnp.asarray(num_experts, jnp.float32), probs.shape[:1])


def one_hot_counts(expert_idx: jax.Array, num_experts: int) -> jax.Array:
    """Slots per expert [..., E] float32 from expert_idx [..., T, K] (-1 entries ignored)."""
    hits = jax.nn.one_hot(expert_idx, num_experts, dtype=jnp.float32)  # -1 -> all zeros
    return hits.sum(axis=(-3, -2))


def mean_over_routers(per_router: jax.Array):
    """(mean, per_router): the value of every loss is the mean of its routers' values."""
    return per_router.mean(), per_router
