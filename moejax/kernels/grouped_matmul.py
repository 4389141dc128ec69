"""Grouped matmul over expert-sorted rows: the dropless engine's workhorse.

Today this is `jax.lax.ragged_dot` (XLA:CPU lowers it to a masked dense product over all
groups; README, "Benchmarks"); a faster kernel slots in behind the same signature.
"""

from __future__ import annotations

import jax


def grouped_matmul(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array) -> jax.Array:
    """Multiplies each group of rows by its own matrix.

    Args:
      lhs: [M, K] rows sorted by group.
      rhs: [G, K, N] one matrix per group.
      group_sizes: [G] int32 rows per group, summing to M.

    Returns:
      [M, N] in lhs's dtype.
    """
    return jax.lax.ragged_dot(lhs, rhs, group_sizes.astype("int32"))
