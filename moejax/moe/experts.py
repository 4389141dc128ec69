"""Experts: stacked SwiGLU weights and the one expert compute, in its two layouts.

`z_e(x) = silu(x W_gate[e]) * (x W_up[e])`, `FFN_e(x) = z_e(x) W_down[e]` (docs/methods.md
section 1), with the custom-VJP activation of `moejax/layers/ffn.py`. Every engine and
expert-parallel body calls one of:
- `experts_on_buffers`: per-expert buffers [E, C, D] (capacity engine, all_to_all, and the
  dense engine with every token in every buffer), one batched matmul;
- `experts_on_sorted_rows`: expert-sorted rows [M, D] with group sizes (dropless engine on
  GPU/TPU, ring and ragged expert parallelism), through `kernels.grouped_matmul`;
- `experts_on_tiles`: expert-sorted rows padded to whole tiles (`kernels.TileLayout`; the
  dropless engine on CPU), the whole SwiGLU per tile in one scan, forward and backward.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.kernels import grouped_matmul, scan_used_tiles, tile_gradients
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


def experts_on_sorted_rows(rows: jax.Array, group_sizes: jax.Array, weights: ExpertWeights,
                           implementation: str = "auto"):
    """Each group of expert-sorted rows through its expert.

    Args:
      rows: [M, D] rows sorted by expert; rows past sum(group_sizes) give zeros.
      group_sizes: [E] int32 rows per expert.
      weights: [E, D, F], [E, D, F], [E, F, D].
      implementation: `kernels.grouped_matmul`'s.

    Returns:
      (y [M, D], z [M, F]) in the rows' dtype.
    """
    gate = grouped_matmul(rows, weights.w_gate, group_sizes, implementation=implementation)
    up = grouped_matmul(rows, weights.w_up, group_sizes, implementation=implementation)
    z = swiglu_activation(gate, up)
    return grouped_matmul(z, weights.w_down, group_sizes, implementation=implementation), z


@jax.custom_vjp
def experts_on_tiles(tiles: jax.Array, tile_group: jax.Array, used_tiles: jax.Array,
                     weights: ExpertWeights):
    """Expert tile_group[i] on tile i: the fused SwiGLU, one tile at a time.

    One scan over tiles forward (three matmuls per tile) and one backward (six), with each
    expert's weight gradients summed over its consecutive tiles (`kernels.tile_gradients`);
    tiles from `used_tiles` on are padding and skipped. The cotangent of z joins the
    backward per tile, so a loss on z (the specialization loss) costs no extra pass.
    Reverse-mode only (a custom VJP).

    Args:
      tiles: [Nt, tile, D] rows; zero rows give zero outputs.
      tile_group: [Nt] int32 expert of each tile, non-decreasing.
      used_tiles: [] int32 tiles holding rows.
      weights: [E, D, F], [E, D, F], [E, F, D].

    Returns:
      (y [Nt, tile, D], z [Nt, tile, F]) in the tiles' dtype.
    """
    (y, z), _ = _experts_on_tiles_fwd(tiles, tile_group, used_tiles, weights)
    return y, z


def _experts_on_tiles_fwd(tiles, tile_group, used_tiles, weights):
    weights = ExpertWeights(*(jnp.asarray(w) for w in weights))  # indexed by traced experts
    def tile(_, inputs):
        rows, expert = inputs
        gate = rows @ weights.w_gate[expert]
        up = rows @ weights.w_up[expert]
        z = swiglu_activation(gate, up)
        return None, (z @ weights.w_down[expert], z, gate, up)

    def skipped(_, inputs):
        hidden = jnp.zeros((tiles.shape[1], weights.w_gate.shape[2]), tiles.dtype)
        return None, (jnp.zeros_like(inputs[0]), hidden, hidden, hidden)

    y, z, gate, up = scan_used_tiles(tile, None, (tiles, tile_group), used_tiles, skipped)[1]
    return (y, z), (tiles, tile_group, used_tiles, weights, gate, up)


def _experts_on_tiles_bwd(residuals, cotangents):
    tiles, tile_group, used_tiles, weights, gate, up = residuals
    d_y, d_z_out = cotangents

    def tile_vjp(rows, expert, inputs):
        gate_t, up_t, d_y_t, d_z_t = inputs
        z, activation_vjp = jax.vjp(swiglu_activation, gate_t, up_t)
        d_gate, d_up = activation_vjp(d_y_t @ weights.w_down[expert].T + d_z_t)
        terms = ExpertWeights(rows.T @ d_gate, rows.T @ d_up, z.T @ d_y_t)
        return terms, d_gate @ weights.w_gate[expert].T + d_up @ weights.w_up[expert].T

    d_weights, d_tiles = tile_gradients(tile_vjp, weights, tiles, tile_group, used_tiles,
                                        (gate, up, d_y, d_z_out))
    return d_tiles, None, None, d_weights


experts_on_tiles.defvjp(_experts_on_tiles_fwd, _experts_on_tiles_bwd)


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
