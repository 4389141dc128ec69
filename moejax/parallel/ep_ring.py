"""Expert parallelism, "ring of experts" (dropless): all_gather in, psum_scatter out.

Runs inside shard_map on one device of the expert axis (n devices, E_l = E / n experts each):

1. all_gather this expert group's tokens and their routing over the expert axis:
   x [T_l, D] -> [n*T_l, D];
2. run the local experts on the gathered slots routed to them (grouped matmul; slots for
   other devices' experts are zeros);
3. psum_scatter the per-slot outputs over the expert axis: every slot's output comes from
   exactly one device, so the sum is that output, and each device gets back its own T_l tokens.

Nothing is dropped beyond what the plan already dropped (a capacity plan's dropped slots are
zero, as in every engine). It works on CPU; the cost is gathering every token to every expert
shard, n times the bytes of an ideal all_to_all.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.moe.experts import ExpertWeights
from moejax.parallel.local_experts import grouped_swiglu, sort_by_local_expert


def ring_body(x, expert_idx, kept, weights: ExpertWeights, *, expert_axis: str,
              tensor_axis: str, with_activations: bool):
    """One device's part of the ring; the arguments are its shards.

    Args:
      x: [T_l, D] this device's tokens.
      expert_idx: [T_l, K] int32 global expert ids.
      kept: [T_l, K] bool, False for slots the plan dropped.
      weights: local expert weights [E_l, D, F_l], [E_l, D, F_l], [E_l, F_l, D].
      expert_axis, tensor_axis: mesh axis names.
      with_activations: also return z.

    Returns:
      (y_slots [T_l, K, D], z_slots [T_l, K, F_l] or None).
    """
    num_local = weights.w_gate.shape[0]
    top_k = expert_idx.shape[1]
    rank = jax.lax.axis_index(expert_axis)
    x_all = jax.lax.all_gather(x, expert_axis, axis=0, tiled=True)  # [n*T_l, D]
    idx_all = jax.lax.all_gather(expert_idx, expert_axis, axis=0, tiled=True)
    kept_all = jax.lax.all_gather(kept.astype(jnp.int32), expert_axis, axis=0, tiled=True)
    mine = (kept_all > 0) & (idx_all // num_local == rank)  # [n*T_l, K]
    local_expert = jnp.where(mine, idx_all % num_local, num_local).reshape(-1)
    order, inverse, group_sizes = sort_by_local_expert(local_expert, num_local)
    y_rows, z_rows = grouped_swiglu(x_all[order // top_k], group_sizes, weights, tensor_axis)

    def back_to_slots(rows):
        slots = jnp.where(mine[..., None], rows[inverse].reshape(*mine.shape, -1), 0)
        return jax.lax.psum_scatter(slots, expert_axis, scatter_dimension=0, tiled=True)

    return back_to_slots(y_rows), (back_to_slots(z_rows) if with_activations else None)
