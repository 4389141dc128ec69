"""Dropless engine: expert-sorted rows through a grouped matmul; nothing is dropped."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.kernels import grouped_matmul
from moejax.layers.dispatch import DispatchPlan, SortedActivations
from moejax.layers.experts import ExpertWeights


def dropless_engine(x: jax.Array, plan: DispatchPlan, weights: ExpertWeights, *,
                    with_activations: bool = False, sorted_activations: bool = False):
    """Runs the experts on ragged groups; same signature as `dense_engine`.

    A capacity plan's drops are honoured (their outputs are zeroed) so that every engine
    computes the same function of the same plan. With `sorted_activations`, z stays in its
    expert-sorted rows (`SortedActivations`).
    """
    top_k = plan.expert_idx.shape[1]
    group_sizes = plan.tokens_per_expert
    x_sorted = x[plan.sorted_slots // top_k]  # [T*K, D]
    gate = grouped_matmul(x_sorted, weights.w_gate, group_sizes)
    up = grouped_matmul(x_sorted, weights.w_up, group_sizes)
    z_sorted = jax.nn.silu(gate) * up
    y_sorted = grouped_matmul(z_sorted, weights.w_down, group_sizes)
    group_start = jnp.cumsum(group_sizes) - group_sizes
    sorted_index = group_start[plan.expert_idx] + plan.position_in_expert  # [T, K]
    kept = plan.kept[..., None]
    y_slots = jnp.where(kept, y_sorted[sorted_index], 0)
    if not with_activations:
        return y_slots, None
    if sorted_activations:
        index = jnp.where(plan.kept, sorted_index, z_sorted.shape[0]).astype(jnp.int32)
        return y_slots, SortedActivations(z_sorted, index)
    return y_slots, jnp.where(kept, z_sorted[sorted_index], 0)
