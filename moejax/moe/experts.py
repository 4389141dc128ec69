"""Experts: stacked SwiGLU weights and the one expert compute, in its two layouts.

`z_e(x) = silu(x W_gate[e]) * (x W_up[e])`, `FFN_e(x) = z_e(x) W_down[e]` (docs/methods.md
section 1), with the custom-VJP activation of `moejax/layers/ffn.py`. Every engine and
expert-parallel body calls one of:
- `experts_on_buffers`: per-expert buffers [E, C, D] (capacity engine, all_to_all, and the
  dense engine with every token in every buffer), one batched matmul;
- `experts_on_sorted_rows`: expert-sorted rows [M, D] with group sizes (dropless engine,
  ring and ragged expert parallelism), through `kernels.grouped_matmul`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.kernels import grouped_matmul
from moejax.layers.ffn import init_swiglu_weights, swiglu_activation


class ExpertWeights(NamedTuple):
    """Stacked expert weights, in the compute dtype.

    Attributes:
      w_gate: [E, D, F].
      w_up: [E, D, F].
      w_down: [E, F, D].
    """

    w_gate: jax.Array
    w_up: jax.Array
    w_down: jax.Array


def experts_on_buffers(buffers: jax.Array, weights: ExpertWeights):
    """Expert e on its buffer rows.

    Args:
      buffers: [E, C, D] rows of each expert (zero rows give zero outputs).
      weights: [E, D, F], [E, D, F], [E, F, D].

    Returns:
      (out [E, C, D], z [E, C, F]) in the buffers' dtype.
    """
    gate = jnp.einsum("ECD,EDF->ECF", buffers, weights.w_gate)
    up = jnp.einsum("ECD,EDF->ECF", buffers, weights.w_up)
    z = swiglu_activation(gate, up)
    return jnp.einsum("ECF,EFD->ECD", z, weights.w_down), z


def experts_on_sorted_rows(rows: jax.Array, group_sizes: jax.Array, weights: ExpertWeights):
    """Each group of expert-sorted rows through its expert.

    Args:
      rows: [M, D] rows sorted by expert; rows past sum(group_sizes) give zeros.
      group_sizes: [E] int32 rows per expert.
      weights: [E, D, F], [E, D, F], [E, F, D].

    Returns:
      (y [M, D], z [M, F]) in the rows' dtype.
    """
    gate = grouped_matmul(rows, weights.w_gate, group_sizes)
    up = grouped_matmul(rows, weights.w_up, group_sizes)
    z = swiglu_activation(gate, up)
    return grouped_matmul(z, weights.w_down, group_sizes), z


class Experts(nnx.Module):
    """E SwiGLU experts of hidden width F over model width D (float32 parameters)."""

    def __init__(self, num_experts: int, d_model: int, d_hidden: int, *, rngs: nnx.Rngs):
        w_gate, w_up, w_down = init_swiglu_weights(rngs.params(), num_experts, d_model, d_hidden)
        self.w_gate = nnx.Param(w_gate)
        self.w_up = nnx.Param(w_up)
        self.w_down = nnx.Param(w_down)

    def weights(self, dtype) -> ExpertWeights:
        """The weights cast once to the compute dtype."""
        return ExpertWeights(
            self.w_gate[...].astype(dtype), self.w_up[...].astype(dtype),
            self.w_down[...].astype(dtype),
        )
