"""Switch/GShard load-balance loss and its sequence-wise and global-batch variants.

Per router (docs/methods.md section 5): `f_e = count_e / (k T)`, `P_e = mean_t s_te`,
`L_lb = E * sum_e f_e P_e`, which is 1 at perfect balance. Averaged over routers, never
concatenated across them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.regularizers._routers import (
    experts_per_router,
    mean_over_routers,
    one_hot_counts,
    with_router_axis,
)


def _per_router(probs, counts, num_experts):
    """probs [R, ..., T, E], counts [R, ..., E] -> [R, ...] values E * sum_e f_e P_e."""
    fraction = counts / jnp.maximum(counts.sum(-1, keepdims=True), 1.0)
    mean_prob = probs.mean(axis=-2)
    return num_experts * (fraction * mean_prob).sum(-1)


def load_balance_loss(probs, expert_idx, *, num_experts=None, sequence_length=None,
                      axis_name=None, extra_tokens_per_expert=None):
    """Switch/GShard load balance.

    Args:
      probs: [R, T, E] or [T, E] float pre-top-k router distribution.
      expert_idx: [R, T, K] or [T, K] int chosen experts (-1 entries are padding, ignored).
      num_experts: true E per router (int or [R]) when E is padded; default probs.shape[-1].
      sequence_length: if given, the sequence-wise variant (DeepSeek-V3): T is split into
        sequences of this length, f and P are taken per sequence, the values averaged.
      axis_name: mesh axis name(s) of the data-parallel axes inside shard_map/pmap: the
        global-batch variant (arXiv 2501.11873). Counts and P are averaged over those shards,
        so every shard gets the loss of the whole global batch.
      extra_tokens_per_expert: [R, E] or [E] counts from other gradient-accumulation
        micro-steps, added to f's counts (global batch across micro-steps).

    Returns:
      (mean over routers [], per-router values [R]).
    """
    probs = with_router_axis(jnp.asarray(probs, jnp.float32), 2)
    expert_idx = with_router_axis(jnp.asarray(expert_idx), 2)
    num_e = experts_per_router(num_experts, probs)
    if sequence_length is not None:
        if axis_name is not None or extra_tokens_per_expert is not None:
            raise ValueError("sequence_length (sequence-wise variant) does not combine with "
                             "axis_name or extra_tokens_per_expert (global-batch variant)")
        routers, tokens, experts = probs.shape
        if tokens % sequence_length:
            raise ValueError(f"sequence_length={sequence_length} does not divide T={tokens}")
        probs = probs.reshape(routers, tokens // sequence_length, sequence_length, experts)
        expert_idx = expert_idx.reshape(routers, tokens // sequence_length, sequence_length, -1)
        values = _per_router(probs, one_hot_counts(expert_idx, experts), num_e[:, None])
        return mean_over_routers(values.mean(-1))
    counts = one_hot_counts(expert_idx, probs.shape[-1])
    if extra_tokens_per_expert is not None:
        counts = counts + with_router_axis(jnp.asarray(extra_tokens_per_expert, jnp.float32), 1)
    if axis_name is not None:
        counts = jax.lax.psum(counts, axis_name)
        probs = jax.lax.pmean(probs.mean(axis=-2, keepdims=True), axis_name)
    return mean_over_routers(_per_router(probs, counts, num_e))
