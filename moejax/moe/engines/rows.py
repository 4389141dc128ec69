"""Moving token-slots into an engine's rows and back, as gathers both ways.

A token-slot is (t, j), numbered t*K + j. An engine that runs its experts on a row layout
(the capacity engine's [E, C] buffers, the dropless engine's padded tiles) describes it with
two index maps:
- row_slot: [R] int32 slot held by each row, T*K for an empty row;
- slot_row: [T, K] int32 row of each slot, R for a slot that has none (dropped).
Each move is `kernels.move_rows`, whose gradient is the other direction's gather (plus a sum
over a token's K slots): never a scatter-add into a zeroed [R, D] or [T, D] array.
"""

from __future__ import annotations

import jax

from moejax.kernels import move_rows


def slots_to_rows(x: jax.Array, row_slot: jax.Array, slot_row: jax.Array) -> jax.Array:
    """x: [T, D] -> [R, D] each row's token (zero for empty rows)."""
    top_k = slot_row.shape[1]
    return move_rows(x, row_slot // top_k, slot_row)  # an empty row's T*K // K = T: zeros


def rows_to_slots(rows: jax.Array, row_slot: jax.Array, slot_row: jax.Array) -> jax.Array:
    """rows: [R, N] -> [T, K, N] each slot's row (zero for slots without one)."""
    slots = move_rows(rows, slot_row.reshape(-1), row_slot[:, None])
    return slots.reshape(*slot_row.shape, rows.shape[-1])
