"""Dropless engine: every token-slot reaches its expert; nothing is dropped.

Two layouts, picked by `kernels.resolve_grouped_matmul(spec.grouped_matmul)`:
- "tiled" (the default on CPU): expert-sorted rows, each expert's group padded to whole tiles
  (`kernels.TileLayout`, `moejax/kernels/tiles.py`), slots moved in and out by gathers
  (`engines/rows.py`) and the whole SwiGLU run per tile (`experts_on_tiles`). Padding costs
  at most one tile per expert.
- otherwise (GPU/TPU): expert-sorted rows through three grouped matmuls (`ragged_dot` or
  tokamax), no padding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.kernels import default_tile_rows, resolve_grouped_matmul, tile_layout
from moejax.moe.dispatch import DispatchPlan, SortedActivations
from moejax.moe.engines.rows import rows_to_slots, slots_to_rows
from moejax.moe.experts import ExpertWeights, experts_on_sorted_rows, experts_on_tiles


def _sorted_index(plan: DispatchPlan) -> jax.Array:
    """[T, K] int32 expert-sorted row of each slot."""
    return (plan.group_start[plan.expert_idx] + plan.position_in_expert).astype(jnp.int32)


def dropless_engine(x: jax.Array, plan: DispatchPlan, weights: ExpertWeights, *,
                    activations: str | None = None, grouped_matmul: str = "auto",
                    tile_rows: int | None = None):
    """Runs the experts on ragged groups; the engine contract (`engines/__init__.py`).

    A capacity plan's drops are honoured (their outputs are zeroed) so that every engine
    computes the same function of the same plan. With `activations="sorted"`, z stays in the
    engine's rows (tiles or sorted rows).

    Args:
      grouped_matmul: one of `kernels.GROUPED_MATMUL_IMPLEMENTATIONS`.
      tile_rows: rows per tile of the tiled layout (default `kernels.default_tile_rows`).
    """
    if resolve_grouped_matmul(grouped_matmul) == "tiled":
        return _tiled(x, plan, weights, activations, tile_rows)
    top_k = plan.expert_idx.shape[1]
    x_sorted = x[plan.sorted_slots // top_k]  # [T*K, D]
    y_sorted, z_sorted = experts_on_sorted_rows(x_sorted, plan.tokens_per_expert, weights,
                                                grouped_matmul)
    sorted_index = _sorted_index(plan)
    kept = plan.kept[..., None]
    y_slots = jnp.where(kept, y_sorted[sorted_index], 0)
    if activations == "sorted":
        index = jnp.where(plan.kept, sorted_index, z_sorted.shape[0]).astype(jnp.int32)
        return y_slots, SortedActivations(z_sorted, index)
    if activations == "slots":
        return y_slots, jnp.where(kept, z_sorted[sorted_index], 0)
    return y_slots, None


def _tiled(x, plan: DispatchPlan, weights: ExpertWeights, activations, tile_rows):
    """The tiled layout: row maps (`engines/rows.py`) of the padded tiles, then the experts."""
    tokens, top_k = plan.expert_idx.shape
    num_slots = tokens * top_k
    tile_rows = tile_rows or default_tile_rows(num_slots, plan.num_experts)
    layout = tile_layout(plan.tokens_per_expert, num_slots, tile_rows)
    num_rows = layout.row_source.shape[0]
    slot_of_row = plan.sorted_slots[jnp.minimum(layout.row_source, num_slots - 1)]
    kept = plan.kept  # a capacity plan's dropped slots get no row
    row_slot = jnp.where((layout.row_source < num_slots) & kept.reshape(-1)[slot_of_row],
                         slot_of_row, num_slots)
    slot_row = jnp.where(kept, layout.padded_row[_sorted_index(plan)], num_rows)
    tiles = slots_to_rows(x, row_slot, slot_row).reshape(-1, tile_rows, x.shape[1])
    y, z = experts_on_tiles(tiles, layout.tile_group, layout.used_tiles, weights)
    y_slots = rows_to_slots(y.reshape(num_rows, -1), row_slot, slot_row)
    z = z.reshape(num_rows, -1)
    if activations == "sorted":
        return y_slots, SortedActivations(z, slot_row)
    if activations == "slots":
        return y_slots, rows_to_slots(z, row_slot, slot_row)
    return y_slots, None
