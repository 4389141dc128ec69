"""Capacity engine: [E, C, D] buffers and one batched matmul; overflow dropped and counted.

Each expert takes its first C token-slots in token order (the plan's stable sort);
a slot at position >= C is dropped: its output is zero and `plan.dropped` counts it.

Moving rows in (tokens -> buffers) and out (buffers -> slots) are gathers both ways
(`engines/rows.py`); being custom VJPs, they support reverse-mode autodiff only (no
`jax.jvp` through this engine).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.moe.dispatch import DispatchPlan, SortedActivations
from moejax.moe.engines.rows import rows_to_slots, slots_to_rows
from moejax.moe.experts import ExpertWeights, experts_on_buffers


def _row_maps(plan: DispatchPlan) -> tuple[jax.Array, jax.Array]:
    """Index maps between token-slots (t*K + j) and buffer rows (e*C + c).

    Returns:
      row_slot: [E*C] int32 slot held by each buffer row, T*K for an empty row.
      slot_row: [T, K] int32 buffer row of each slot, E*C for a dropped slot.
    """
    num_slots = plan.sorted_slots.shape[0]
    capacity = plan.capacity
    position = jnp.arange(capacity, dtype=jnp.int32)  # [C] position in the expert's buffer
    sorted_pos = plan.group_start[:, None] + position[None, :]  # [E, C]
    filled = position[None, :] < plan.tokens_per_expert[:, None]
    sorted_pos = jnp.minimum(sorted_pos, num_slots - 1)
    row_slot = jnp.where(filled, plan.sorted_slots[sorted_pos], num_slots).reshape(-1)
    slot_row = plan.expert_idx * capacity + plan.position_in_expert
    slot_row = jnp.where(plan.kept, slot_row, plan.num_experts * capacity)
    return row_slot.astype(jnp.int32), slot_row.astype(jnp.int32)


def capacity_engine(x: jax.Array, plan: DispatchPlan, weights: ExpertWeights, *,
                    activations: str | None = None):
    """Runs the experts on [E, C, D] buffers; the engine contract (`engines/__init__.py`).

    Requires a plan made with a capacity (`make_plan(..., capacity=C)`). With
    `activations="sorted"`, z stays in its [E*C, F] buffer rows.
    """
    if plan.capacity is None:
        raise ValueError("the capacity engine needs a plan made with capacity=C")
    row_slot, slot_row = _row_maps(plan)
    buffers = slots_to_rows(x, row_slot, slot_row)
    buffers = buffers.reshape(plan.num_experts, plan.capacity, x.shape[1])
    out, z = experts_on_buffers(buffers, weights)
    y_slots = rows_to_slots(out.reshape(-1, out.shape[-1]), row_slot, slot_row)
    z = z.reshape(-1, z.shape[-1])
    if activations == "sorted":
        return y_slots, SortedActivations(z, slot_row)
    if activations == "slots":
        return y_slots, rows_to_slots(z, row_slot, slot_row)
    return y_slots, None
