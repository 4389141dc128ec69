"""Expert parallelism with ragged_all_to_all (dropless, GPU/TPU).

Each device sends exactly its slots for each destination, no padding:

1. order this device's kept slots by global expert (destination-major, expert-minor);
2. all_gather the [n] send counts into the [n, n] count matrix, from which every offset
   follows (`ragged_offsets`);
3. ragged_all_to_all the rows and their local expert ids; run the local experts on what
   arrived (grouped matmul); ragged_all_to_all the outputs back along the reversed offsets.

XLA:CPU cannot compile `jax.lax.ragged_all_to_all` (jax issue 34755), so on CPU the mode is
an error naming the alternatives. For tests, `emulated_ragged_all_to_all` implements the same
semantics with a padded all_to_all, so the offset bookkeeping is checked on CPU; the native
collective itself only runs on GPU/TPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.kernels import exclusive_cumsum
from moejax.moe.experts import ExpertWeights
from moejax.parallel.local_experts import grouped_swiglu, sort_by_local_expert


def ragged_offsets(counts: jax.Array, rank: jax.Array) -> dict:
    """The offsets of both trips for device `rank`.

    Args:
      counts: [n, n] int32; counts[s, d] = slots device s sends to device d.
      rank: this device's index on the expert axis.

    Returns:
      dict of [n] int32 arrays: `send_sizes`, `input_offsets` (where each destination's chunk
      starts in my send buffer), `output_offsets` (where my chunk starts in each destination's
      receive buffer), `recv_sizes` and `recv_offsets` (each source's chunk in my receive
      buffer), and `return_offsets` (where my returned chunk goes in each source's send buffer).
    """
    send_start = exclusive_cumsum(counts, axis=1)  # [s, d] chunk start in s's send buffer
    recv_start = exclusive_cumsum(counts, axis=0)  # [s, d] chunk start in d's recv buffer
    return {"send_sizes": counts[rank], "input_offsets": send_start[rank],
            "output_offsets": recv_start[rank], "recv_sizes": counts[:, rank],
            "recv_offsets": recv_start[:, rank], "return_offsets": send_start[:, rank]}


def emulated_ragged_all_to_all(operand, output, input_offsets, send_sizes, output_offsets,
                               recv_sizes, *, axis_name):
    """`jax.lax.ragged_all_to_all`'s semantics from a padded all_to_all (runs on CPU).

    Chunk d of `operand` (rows input_offsets[d] .. + send_sizes[d]) is written into device d's
    `output` at output_offsets[d]; rows of `output` no chunk covers keep their values.
    Every chunk is padded to operand.shape[0] rows, so it moves n times the bytes.
    """
    del recv_sizes  # implied by the senders' send_sizes, which travel with the chunks
    rows = operand.shape[0]
    span = jnp.arange(rows, dtype=jnp.int32)
    chunks = jnp.take(operand, input_offsets[:, None] + span, axis=0, mode="fill", fill_value=0)
    meta = jnp.stack([output_offsets, send_sizes], axis=1)  # [n, 2]
    chunks = jax.lax.all_to_all(chunks, axis_name, 0, 0, tiled=True)  # [n, rows, ...] by source
    meta = jax.lax.all_to_all(meta, axis_name, 0, 0, tiled=True)
    target = jnp.where(span < meta[:, 1:], meta[:, :1] + span, output.shape[0])  # [n, rows]
    return output.at[target.reshape(-1)].set(chunks.reshape(-1, *operand.shape[1:]), mode="drop")


def ragged_body(x, expert_idx, kept, weights: ExpertWeights, *, expert_axis: str,
                tensor_axis: str, with_activations: bool, collective=None):
    """One device's part of the exchange; the arguments are its shards.

    Args:
      x: [T_l, D] this device's tokens.
      expert_idx: [T_l, K] int32 global expert ids.
      kept: [T_l, K] bool, False for slots the plan dropped.
      weights: local expert weights [E_l, D, F_l], [E_l, D, F_l], [E_l, F_l, D].
      expert_axis, tensor_axis: mesh axis names.
      with_activations: also return z.
      collective: the ragged all_to_all (default `jax.lax.ragged_all_to_all`).

    Returns:
      (y_slots [T_l, K, D], z_slots [T_l, K, F_l] or None).
    """
    collective = collective or jax.lax.ragged_all_to_all
    tokens, top_k = expert_idx.shape
    num_local, num_slots = weights.w_gate.shape[0], tokens * top_k
    num_shards = jax.lax.axis_size(expert_axis)
    flat_expert, sent = expert_idx.reshape(-1), kept.reshape(-1)
    order = jnp.argsort(jnp.where(sent, flat_expert, num_shards * num_local), stable=True)
    destination = flat_expert // num_local
    send_counts = jnp.bincount(jnp.where(sent, destination, num_shards), length=num_shards + 1)
    counts = jax.lax.all_gather(send_counts[:num_shards].astype(jnp.int32), expert_axis)
    offsets = ragged_offsets(counts, jax.lax.axis_index(expert_axis))
    recv_rows = num_shards * num_slots  # worst case: every source sends all its slots here

    def forward(a, fill):
        out = jnp.full((recv_rows, *a.shape[1:]), fill, a.dtype)
        return collective(a, out, offsets["input_offsets"], offsets["send_sizes"],
                          offsets["output_offsets"], offsets["recv_sizes"], axis_name=expert_axis)

    recv_x = forward(x[order // top_k], 0)
    recv_expert = forward((flat_expert[order] % num_local).astype(jnp.int32), num_local)
    arrived = jnp.arange(recv_rows) < offsets["recv_sizes"].sum()
    rows_order, inverse, group_sizes = sort_by_local_expert(
        jnp.where(arrived, recv_expert, num_local), num_local)
    y_rows, z_rows = grouped_swiglu(recv_x[rows_order], group_sizes, weights, tensor_axis)

    def back_to_slots(rows):  # [recv_rows, N] in arrival order -> [T_l, K, N]
        returned = collective(rows[inverse], jnp.zeros((num_slots, rows.shape[1]), rows.dtype),
                              offsets["recv_offsets"], offsets["recv_sizes"],
                              offsets["return_offsets"], offsets["send_sizes"],
                              axis_name=expert_axis)
        slot_order = jnp.zeros_like(order).at[order].set(jnp.arange(num_slots, dtype=order.dtype))
        slots = jnp.where(sent[:, None], returned[slot_order], 0)
        return slots.reshape(tokens, top_k, -1)

    return back_to_slots(y_rows), (back_to_slots(z_rows) if with_activations else None)
