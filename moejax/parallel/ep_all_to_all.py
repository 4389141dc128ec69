"""Expert parallelism with a padded all_to_all and a fixed capacity per (source, destination).

The capacity plan is made on the global batch (`moe/dispatch.py`), so which slots are kept is
exactly what one device would keep: slot (t, j) goes to row `position_in_expert` of its
expert's [C, D] buffer. The all_to_all only moves the kept slots to the device holding their
expert and back. Each (source, destination) pair of devices on the expert axis has a fixed
buffer of P rows:

    P = min(T_l * K, E_l * C)                       by default: never overflows, or
    P = ceil(pair_capacity_factor * T_l * K / n)    with a factor: smaller, may overflow.

Slots past P in a pair (in token order) are dropped too; `restrict_to_pair_capacity` marks
them in the plan before the block builds its routing record, so the record's `kept` and
`dropped` count both kinds of drop, on the global batch.

On the destination, the rows land in [E_l, C, D] buffers (the capacity engine's layout) and
one batched matmul runs the local experts. With data x fsdp > 1 each device fills only the
rows its own token group uses, because C is global: the price of drops identical to one
device's.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from moejax.kernels import exclusive_cumsum
from moejax.moe.dispatch import DispatchPlan
from moejax.moe.experts import ExpertWeights, experts_on_buffers


def pair_capacity(tokens_per_shard: int, top_k: int, num_local: int, capacity: int,
                  num_shards: int, factor: float | None) -> int:
    """P, the rows each (source, destination) pair of expert shards exchanges (see module doc)."""
    safe = min(tokens_per_shard * top_k, num_local * capacity)
    if factor is None:
        return safe
    return max(1, min(safe, math.ceil(factor * tokens_per_shard * top_k / num_shards)))


def pair_rank(destination: jax.Array, valid: jax.Array, num_shards: int) -> jax.Array:
    """Rank of each slot among the valid slots of its block going to the same destination.

    Args:
      destination: [..., N] int32 destination shard of each slot (slots in token order).
      valid: [..., N] bool slots that are sent.
      num_shards: n.

    Returns:
      [..., N] int32 rank (0, 1, ...) in slot order; arbitrary where not valid.
    """
    one_hot = ((destination[..., None] == jnp.arange(num_shards)) & valid[..., None])
    one_hot = one_hot.astype(jnp.int32)
    before = exclusive_cumsum(one_hot, axis=-2)
    return jnp.take_along_axis(before, destination[..., None], axis=-1)[..., 0]


def restrict_to_pair_capacity(plan: DispatchPlan, *, num_blocks: int, num_shards: int,
                              pair_rows: int) -> DispatchPlan:
    """Drops, and counts, the kept slots that overflow their (source, destination) pair.

    Args:
      plan: the global capacity plan over T tokens.
      num_blocks: token shards (data x fsdp x expert); block b holds tokens b*T_l..(b+1)*T_l-1
        and is expert shard b % num_shards of its group.
      num_shards: n, the expert axis size.
      pair_rows: P.

    Returns:
      The plan with `kept` and `dropped` updated (positions and counts unchanged).
    """
    tokens, top_k = plan.expert_idx.shape
    num_local = plan.num_experts // num_shards
    destination = (plan.expert_idx // num_local).reshape(num_blocks, -1)
    kept = plan.kept.reshape(num_blocks, -1)
    kept = (kept & (pair_rank(destination, kept, num_shards) < pair_rows)).reshape(tokens, top_k)
    dropped = (tokens * top_k - kept.sum()).astype(jnp.int32)
    return dataclasses.replace(plan, kept=kept, dropped=dropped)


def _take(rows, index):
    return jnp.take(rows, index, axis=0, mode="fill", fill_value=0)


def all_to_all_body(x, expert_idx, position, kept, weights: ExpertWeights, *, capacity: int,
                    pair_rows: int, expert_axis: str, tensor_axis: str,
                    with_activations: bool):
    """One device's part of the exchange; the arguments are its shards.

    Args:
      x: [T_l, D] this device's tokens.
      expert_idx, position: [T_l, K] int32 global expert and row in that expert's buffer.
      kept: [T_l, K] bool, already restricted to the pair capacity.
      weights: local expert weights [E_l, D, F_l], [E_l, D, F_l], [E_l, F_l, D].
      capacity: C; pair_rows: P.
      expert_axis, tensor_axis: mesh axis names.
      with_activations: also return z.

    Returns:
      (y_slots [T_l, K, D], z_slots [T_l, K, F_l] or None).
    """
    tokens, top_k = expert_idx.shape
    num_local = weights.w_gate.shape[0]
    num_shards = jax.lax.axis_size(expert_axis)
    num_rows, buffer_rows = num_shards * pair_rows, num_local * capacity
    destination, sent = (expert_idx // num_local).reshape(-1), kept.reshape(-1)
    send_row = jnp.where(sent, destination * pair_rows + pair_rank(destination, sent, num_shards),
                         num_rows)  # [T_l*K] row of the send buffer; num_rows = not sent
    row_slot = jnp.full((num_rows,), tokens * top_k, jnp.int32).at[send_row].set(
        jnp.arange(tokens * top_k, dtype=jnp.int32), mode="drop")
    buffer_row = (expert_idx % num_local) * capacity + position  # [T_l, K]
    empty_row = row_slot >= tokens * top_k
    row_target = _take(buffer_row.reshape(-1), row_slot) + buffer_rows * empty_row

    def exchange(a):  # [n*P, ...] -> [n*P, ...]: block d goes to device d, block s comes from s
        blocks = a.reshape(num_shards, pair_rows, *a.shape[1:])
        return jax.lax.all_to_all(blocks, expert_axis, 0, 0, tiled=True).reshape(a.shape)

    recv_x, recv_target = exchange(_take(x, row_slot // top_k)), exchange(row_target)
    source_row = jnp.full((buffer_rows,), num_rows, jnp.int32).at[recv_target].set(
        jnp.arange(num_rows, dtype=jnp.int32), mode="drop")
    buffers = _take(recv_x, source_row).reshape(num_local, capacity, -1)  # [E_l, C, D]
    out, z = experts_on_buffers(buffers, weights)
    out = jax.lax.psum(out, tensor_axis)

    def back_to_slots(rows):  # [E_l, C, N] -> [T_l, K, N]
        returned = exchange(_take(rows.reshape(buffer_rows, -1), recv_target))
        return _take(returned, send_row).reshape(tokens, top_k, -1)

    return back_to_slots(out), (back_to_slots(z) if with_activations else None)
