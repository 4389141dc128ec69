"""Capacity engine: [E, C, D] buffers and one batched matmul; overflow dropped and counted.

Each expert takes its first C token-slots in token order (the plan's stable sort);
a slot at position >= C is dropped: its output is zero and `plan.dropped` counts it.

Moving rows in (tokens -> buffers) and out (buffers -> slots) are gathers whose
gradients are gathers too: kept slots and filled buffer rows correspond one to one, so
each move's transpose is the other direction's gather (plus a sum over a token's K
slots), never a scatter-add into a zeroed [E, C, D] or [T, D] array. Being custom VJPs, they
support reverse-mode autodiff only (no `jax.jvp` through this engine).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.moe.dispatch import DispatchPlan, SortedActivations
from moejax.moe.experts import ExpertWeights, experts_on_buffers


@jax.custom_vjp
def _move_rows(src: jax.Array, index: jax.Array, inverse: jax.Array) -> jax.Array:
    """out[m] = src[index[m]], zero where index[m] is out of range.

    Args:
      src: [N, D] rows.
      index: [M] int32 source row of each output row; out of range (>= N) gives zeros.
      inverse: [N, J] int32 output rows that read each source row, out of range (>= M)
        where fewer than J do; the gradient sums d_out over these rows.

    Returns:
      [M, D] in src's dtype.
    """
    return jnp.take(src, index, axis=0, mode="fill", fill_value=0)


def _move_rows_fwd(src, index, inverse):
    return _move_rows(src, index, inverse), (index, inverse)


def _move_rows_bwd(residuals, d_out):
    index, inverse = residuals
    d_src = jnp.take(d_out, inverse, axis=0, mode="fill", fill_value=0)  # [N, J, D]
    d_src = d_src[:, 0] if inverse.shape[1] == 1 else d_src.sum(axis=1)
    return d_src, None, None


_move_rows.defvjp(_move_rows_fwd, _move_rows_bwd)


def _row_maps(plan: DispatchPlan) -> tuple[jax.Array, jax.Array]:
    """Index maps between token-slots (t*K + j) and buffer rows (e*C + c).

    Returns:
      row_slot: [E*C] int32 slot held by each buffer row, T*K for an empty row.
      slot_row: [T, K] int32 buffer row of each slot, E*C for a dropped slot.
    """
    num_slots = plan.sorted_slots.shape[0]
    capacity = plan.capacity
    group_start = jnp.cumsum(plan.tokens_per_expert) - plan.tokens_per_expert
    sorted_pos = group_start[:, None] + jnp.arange(capacity, dtype=jnp.int32)[None, :]  # [E, C]
    filled = jnp.arange(capacity, dtype=jnp.int32)[None, :] < plan.tokens_per_expert[:, None]
    sorted_pos = jnp.minimum(sorted_pos, num_slots - 1)
    row_slot = jnp.where(filled, plan.sorted_slots[sorted_pos], num_slots).reshape(-1)
    slot_row = plan.expert_idx * capacity + plan.position_in_expert
    slot_row = jnp.where(plan.kept, slot_row, plan.num_experts * capacity)
    return row_slot.astype(jnp.int32), slot_row.astype(jnp.int32)


def _gather_buffers(x: jax.Array, row_slot: jax.Array, slot_row: jax.Array,
                    plan: DispatchPlan) -> jax.Array:
    """x: [T, D] -> [E, C, D] rows of each expert's first C slots (zero past its count)."""
    top_k = plan.expert_idx.shape[1]
    buffers = _move_rows(x, row_slot // top_k, slot_row)  # an empty row's T*K // K = T: zeros
    return buffers.reshape(plan.num_experts, plan.capacity, x.shape[1])


def _gather_slots(rows: jax.Array, row_slot: jax.Array, slot_row: jax.Array) -> jax.Array:
    """rows: [E, C, N] -> [T, K, N] each slot's row, zero for dropped slots."""
    flat = rows.reshape(-1, rows.shape[-1])
    slots = _move_rows(flat, slot_row.reshape(-1), row_slot[:, None])
    return slots.reshape(*slot_row.shape, rows.shape[-1])


def capacity_engine(x: jax.Array, plan: DispatchPlan, weights: ExpertWeights, *,
                    activations: str | None = None):
    """Runs the experts on [E, C, D] buffers; the engine contract (`engines/__init__.py`).

    Requires a plan made with a capacity (`make_plan(..., capacity=C)`). With
    `activations="sorted"`, z stays in its [E*C, F] buffer rows.
    """
    if plan.capacity is None:
        raise ValueError("the capacity engine needs a plan made with capacity=C")
    row_slot, slot_row = _row_maps(plan)
    buffers = _gather_buffers(x, row_slot, slot_row, plan)
    out, z = experts_on_buffers(buffers, weights)
    y_slots = _gather_slots(out, row_slot, slot_row)
    if activations == "sorted":
        return y_slots, SortedActivations(z.reshape(-1, z.shape[-1]), slot_row)
    if activations == "slots":
        return y_slots, _gather_slots(z, row_slot, slot_row)
    return y_slots, None
