"""Dropless engine: expert-sorted rows through a grouped matmul; nothing is dropped."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.moe.dispatch import DispatchPlan, SortedActivations
from moejax.moe.experts import ExpertWeights, experts_on_sorted_rows


def dropless_engine(x: jax.Array, plan: DispatchPlan, weights: ExpertWeights, *,
                    activations: str | None = None):
    """Runs the experts on ragged groups; the engine contract (`engines/__init__.py`).

    A capacity plan's drops are honoured (their outputs are zeroed) so that every engine
    computes the same function of the same plan. With `activations="sorted"`, z stays in its
    expert-sorted rows.
    """
    top_k = plan.expert_idx.shape[1]
    group_sizes = plan.tokens_per_expert
    x_sorted = x[plan.sorted_slots // top_k]  # [T*K, D]
    y_sorted, z_sorted = experts_on_sorted_rows(x_sorted, group_sizes, weights)
    group_start = jnp.cumsum(group_sizes) - group_sizes
    sorted_index = group_start[plan.expert_idx] + plan.position_in_expert  # [T, K]
    kept = plan.kept[..., None]
    y_slots = jnp.where(kept, y_sorted[sorted_index], 0)
    if activations == "sorted":
        index = jnp.where(plan.kept, sorted_index, z_sorted.shape[0]).astype(jnp.int32)
        return y_slots, SortedActivations(z_sorted, index)
    if activations == "slots":
        return y_slots, jnp.where(kept, z_sorted[sorted_index], 0)
    return y_slots, None
