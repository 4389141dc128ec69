"""Grouped matmul over expert-sorted rows: the dropless engine's workhorse.

`grouped_matmul(lhs [M, K], rhs [G, K, N], group_sizes [G])` multiplies each group of rows by
its own matrix. Implementations (GROUPED_MATMUL_IMPLEMENTATIONS):
- "ragged_dot": `jax.lax.ragged_dot`, a native grouped GEMM on GPU and TPU. XLA:CPU lowers it
  to a masked dense product over all groups (G times the work: 88x a dense FFN at E=64).
- "tokamax": tokamax's `ragged_dot` kernels (optional extra `moejax[tokamax]`; jax >= 0.11,
  Python >= 3.12).
- "tiled": each group padded to a multiple of a row tile (`tiles.py`: `TileLayout`), then one
  `[tile, K] @ [K, N]` matmul per tile in a `lax.scan` (`tiled_matmul`); the padding tiles past
  the last group are skipped. Forward and backward are gathers and per-tile matmuls, the
  backward the same `tiles.tile_gradients` scan as the fused expert SwiGLU's: no scatter-add
  into a zeroed buffer.
- "auto": "tiled" on CPU; "tokamax" on GPU when installed, else "ragged_dot".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.kernels.tiles import (
    default_tile_rows,
    from_tiles,
    scan_used_tiles,
    tile_gradients,
    tile_layout,
    to_tiles,
)
from moejax.options import check_choice

try:  # optional: tokamax's grouped GEMM kernels (GPU machine)
    import tokamax as _tokamax
except ImportError:  # pragma: no cover - depends on the installed extras
    _tokamax = None

GROUPED_MATMUL_IMPLEMENTATIONS = ("auto", "tiled", "ragged_dot", "tokamax")


def check_grouped_matmul(implementation: str, option: str = "grouped_matmul") -> None:
    """Raises ValueError, naming `option`, unless the implementation exists and is installed."""
    check_choice(option, implementation, GROUPED_MATMUL_IMPLEMENTATIONS)
    if implementation == "tokamax" and _tokamax is None:
        raise ValueError(f"{option}='tokamax' needs tokamax (pip install 'moejax[tokamax]', "
                         "jax >= 0.11, Python >= 3.12); allowed without it: auto, tiled, "
                         "ragged_dot")


def resolve_grouped_matmul(implementation: str = "auto") -> str:
    """The implementation that runs: "auto" resolved for this backend; checks the name."""
    check_grouped_matmul(implementation)
    if implementation != "auto":
        return implementation
    if jax.default_backend() == "cpu":
        return "tiled"
    return "tokamax" if _tokamax is not None else "ragged_dot"


@jax.custom_vjp
def tiled_matmul(tiles: jax.Array, rhs: jax.Array, tile_group: jax.Array,
                 used_tiles: jax.Array) -> jax.Array:
    """out[i] = tiles[i] @ rhs[tile_group[i]] for i < used_tiles, zero after.

    Args:
      tiles: [Nt, tile, K].
      rhs: [G, K, N].
      tile_group: [Nt] int32, non-decreasing.
      used_tiles: [] int32.

    Returns:
      [Nt, tile, N] in tiles' dtype.
    """
    rhs = jnp.asarray(rhs)  # indexed by traced groups

    def tile(_, inputs):
        rows, group = inputs
        return None, (rows @ rhs[group]).astype(tiles.dtype)

    def skipped(_, inputs):
        return None, jnp.zeros((tiles.shape[1], rhs.shape[2]), tiles.dtype)

    return scan_used_tiles(tile, None, (tiles, tile_group), used_tiles, skipped)[1]


def _tiled_matmul_fwd(tiles, rhs, tile_group, used_tiles):
    rhs = jnp.asarray(rhs)
    return tiled_matmul(tiles, rhs, tile_group, used_tiles), (tiles, rhs, tile_group, used_tiles)


def _tiled_matmul_bwd(residuals, d_out):
    tiles, rhs, tile_group, used_tiles = residuals

    def tile_vjp(rows, group, d_rows_out):
        return rows.T @ d_rows_out, d_rows_out @ rhs[group].T

    d_rhs, d_tiles = tile_gradients(tile_vjp, rhs, tiles, tile_group, used_tiles, d_out)
    return d_tiles, d_rhs, None, None


tiled_matmul.defvjp(_tiled_matmul_fwd, _tiled_matmul_bwd)


def grouped_matmul(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array, *,
                   implementation: str = "auto", tile_rows: int | None = None) -> jax.Array:
    """Multiplies each group of rows by its own matrix.

    Args:
      lhs: [M, K] rows sorted by group; rows past sum(group_sizes) give zeros.
      rhs: [G, K, N] one matrix per group.
      group_sizes: [G] int32 rows per group, summing to at most M.
      implementation: one of GROUPED_MATMUL_IMPLEMENTATIONS.
      tile_rows: "tiled" only: rows per tile (default `default_tile_rows`).

    Returns:
      [M, N] in lhs's dtype.
    """
    implementation = resolve_grouped_matmul(implementation)
    group_sizes = group_sizes.astype(jnp.int32)
    if implementation == "ragged_dot":
        return jax.lax.ragged_dot(lhs, rhs, group_sizes)
    if implementation == "tokamax":
        return _tokamax.ragged_dot(lhs, rhs, group_sizes)
    tile_rows = tile_rows or default_tile_rows(lhs.shape[0], rhs.shape[0])
    layout = tile_layout(group_sizes, lhs.shape[0], tile_rows)
    out = tiled_matmul(to_tiles(lhs, layout), rhs, layout.tile_group, layout.used_tiles)
    return from_tiles(out, layout)
