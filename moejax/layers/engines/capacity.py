"""Capacity engine: [E, C, D] buffers and one batched matmul; overflow dropped and counted.

Each expert takes its first C token-slots in token order (the plan's stable sort);
a slot at position >= C is dropped: its output is zero and `plan.dropped` counts it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.layers.dispatch import DispatchPlan
from moejax.layers.experts import ExpertWeights


def _gather_buffers(x: jax.Array, plan: DispatchPlan) -> jax.Array:
    """x: [T, D] -> [E, C, D] rows of each expert's first C slots (zero past its count)."""
    top_k = plan.expert_idx.shape[1]
    capacity = plan.capacity
    group_start = jnp.cumsum(plan.tokens_per_expert) - plan.tokens_per_expert
    sorted_pos = group_start[:, None] + jnp.arange(capacity)[None, :]  # [E, C]
    filled = jnp.arange(capacity)[None, :] < plan.tokens_per_expert[:, None]
    sorted_pos = jnp.minimum(sorted_pos, plan.sorted_slots.shape[0] - 1)
    token = plan.sorted_slots[sorted_pos] // top_k
    return jnp.where(filled[..., None], x[token], 0)


def capacity_engine(x: jax.Array, plan: DispatchPlan, weights: ExpertWeights, *,
                    with_activations: bool = False):
    """Runs the experts on [E, C, D] buffers; same signature as `dense_engine`.

    Requires a plan made with a capacity (`make_plan(..., capacity=C)`).
    """
    if plan.capacity is None:
        raise ValueError("the capacity engine needs a plan made with capacity=C")
    buffers = _gather_buffers(x, plan)
    gate = jnp.einsum("ECD,EDF->ECF", buffers, weights.w_gate)
    up = jnp.einsum("ECD,EDF->ECF", buffers, weights.w_up)
    z = jax.nn.silu(gate) * up
    out = jnp.einsum("ECF,EFD->ECD", z, weights.w_down)
    position = jnp.minimum(plan.position_in_expert, plan.capacity - 1)
    kept = plan.kept[..., None]
    y_slots = jnp.where(kept, out[plan.expert_idx, position], 0)
    z_slots = jnp.where(kept, z[plan.expert_idx, position], 0) if with_activations else None
    return y_slots, z_slots
