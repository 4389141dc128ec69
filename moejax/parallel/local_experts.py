"""Expert parallelism, shared piece: one device's experts on rows it holds (inside shard_map).

Used by the dropless expert-parallel modes (ring of experts, ragged all_to_all): the rows for
this device's E_l local experts are sorted by local expert and run through the grouped matmul;
rows marked "not mine" (local expert id E_l) sort last and produce zeros. The expert hidden
width may be split over the tensor axis: each tensor shard computes its F/n_tensor slice of
z and a partial y, and y is summed over the tensor axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.moe.experts import ExpertWeights, experts_on_sorted_rows


def sort_by_local_expert(local_expert: jax.Array, num_local: int):
    """Stable order of rows by local expert, and the group sizes.

    Args:
      local_expert: [N] int32 local expert of each row in 0..num_local, where num_local means
        "not this device's" (those rows sort last and belong to no group).
      num_local: E_l, the experts on this device.

    Returns:
      (order [N] int32 row ids in sorted order, inverse [N] int32 sorted position of each row,
      group_sizes [E_l] int32).
    """
    order = jnp.argsort(local_expert, stable=True).astype(jnp.int32)
    inverse = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=jnp.int32))
    group_sizes = jnp.bincount(local_expert, length=num_local + 1)[:num_local]
    return order, inverse, group_sizes.astype(jnp.int32)


def grouped_swiglu(rows: jax.Array, group_sizes: jax.Array, weights: ExpertWeights,
                   tensor_axis: str):
    """SwiGLU experts over expert-sorted rows.

    Args:
      rows: [M, D] rows sorted by local expert; rows past sum(group_sizes) give zeros.
      group_sizes: [E_l] int32 rows per local expert.
      weights: this device's expert weights [E_l, D, F_l], [E_l, D, F_l], [E_l, F_l, D]
        (F_l = F / n_tensor).
      tensor_axis: mesh axis splitting F; y is summed over it.

    Returns:
      (y [M, D] full expert outputs, z [M, F_l] this tensor shard's activations).
    """
    # ragged_dot, a primitive whose transpose sums the weight gradients over the mesh axes the
    # rows vary over; the tiled kernels' custom VJPs cannot (XLA:CPU: a masked dense product)
    y, z = experts_on_sorted_rows(rows, group_sizes, weights, "ragged_dot")
    return jax.lax.psum(y, tensor_axis), z
