"""Grouped matmul over expert-sorted rows: the dropless engine's workhorse.

`grouped_matmul(lhs [M, K], rhs [G, K, N], group_sizes [G])` multiplies each group of rows by
its own matrix. Implementations (GROUPED_MATMUL_IMPLEMENTATIONS):
- "ragged_dot": `jax.lax.ragged_dot`, a native grouped GEMM on GPU and TPU. XLA:CPU lowers it
  to a masked dense product over all groups (G times the work: 88x a dense FFN at E=64).
- "tokamax": tokamax's `ragged_dot` kernels (optional extra `moejax[tokamax]`; jax >= 0.11,
  Python >= 3.12).
- "tiled": each group padded to a multiple of a row tile, then one `[tile, K] @ [K, N]` matmul
  per tile in a `lax.scan` (`TileLayout`, `tiled_matmul`); the padding tiles past the last
  group are skipped. Forward and backward are gathers
  and per-tile matmuls: no scatter-add into a zeroed buffer.
- "auto": "tiled" on CPU; "tokamax" on GPU when installed, else "ragged_dot".

The tile layout is also what the dropless engine uses on CPU, where it runs the whole expert
SwiGLU per tile (`moejax/moe/experts.py:experts_on_tiles`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

try:  # optional: tokamax's grouped GEMM kernels (GPU machine)
    import tokamax as _tokamax
except ImportError:  # pragma: no cover - depends on the installed extras
    _tokamax = None

GROUPED_MATMUL_IMPLEMENTATIONS = ("auto", "tiled", "ragged_dot", "tokamax")
MAX_TILE_ROWS = 128  # default tile: rows per group / 2, a power of two in [8, 128]


def check_grouped_matmul(implementation: str, option: str = "grouped_matmul") -> None:
    """Raises ValueError, naming `option`, unless the implementation exists and is installed."""
    if implementation not in GROUPED_MATMUL_IMPLEMENTATIONS:
        allowed = ", ".join(GROUPED_MATMUL_IMPLEMENTATIONS)
        raise ValueError(f"{option}={implementation!r}; allowed: {allowed}")
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


def default_tile_rows(num_rows: int, num_groups: int) -> int:
    """Rows per tile: half the mean group size as a power of two, within [8, MAX_TILE_ROWS].

    Each group wastes half a tile on average; a smaller tile wastes less but pays the loop's
    per-tile cost more often (benchmarks/moe_block.py measures both).
    """
    half_group = max(1, num_rows // max(1, 2 * num_groups))
    return int(min(MAX_TILE_ROWS, max(8, 1 << (half_group.bit_length() - 1))))


class TileLayout(NamedTuple):
    """Expert-sorted rows, each group padded to whole tiles.

    Attributes:
      row_source: [P] int32 sorted row held by each padded row; M (reads zero) for padding.
      padded_row: [M] int32 padded row of each sorted row; P for rows past sum(group_sizes).
      tile_group: [P // tile_rows] int32 group of each tile (non-decreasing; trailing tiles
        of padding belong to the last group and hold zero rows).
      used_tiles: [] int32 tiles holding rows; the trailing ones are skipped.
    """

    row_source: jax.Array
    padded_row: jax.Array
    tile_group: jax.Array
    used_tiles: jax.Array

    @property
    def tile_rows(self) -> int:
        return self.row_source.shape[0] // self.tile_group.shape[0]


def tile_layout(group_sizes: jax.Array, num_rows: int, tile_rows: int) -> TileLayout:
    """The padded layout of `num_rows` sorted rows in groups of `group_sizes` [G].

    P = (num_rows // tile_rows + G) * tile_rows, a static bound on the padded size.
    """
    group_sizes = group_sizes.astype(jnp.int32)
    num_groups = group_sizes.shape[0]
    num_tiles = num_rows // tile_rows + num_groups
    tiles_per_group = -(-group_sizes // tile_rows)
    tile_end = jnp.cumsum(tiles_per_group)
    padded_start = (tile_end - tiles_per_group) * tile_rows  # [G]
    row_end = jnp.cumsum(group_sizes)
    row_start = row_end - group_sizes
    rows = jnp.arange(num_rows, dtype=jnp.int32)
    row_group = jnp.searchsorted(row_end, rows, side="right")  # G for rows past the groups
    group = jnp.minimum(row_group, num_groups - 1)
    padded_row = jnp.where(row_group < num_groups, padded_start[group] + rows - row_start[group],
                           num_tiles * tile_rows)
    tiles = jnp.arange(num_tiles, dtype=jnp.int32)
    tile_group = jnp.minimum(jnp.searchsorted(tile_end, tiles, side="right"), num_groups - 1)
    padded = jnp.arange(num_tiles * tile_rows, dtype=jnp.int32)
    padded_group = jnp.repeat(tile_group, tile_rows)
    position = padded - padded_start[padded_group]
    row_source = jnp.where(position < group_sizes[padded_group],
                           row_start[padded_group] + position, num_rows)
    return TileLayout(row_source.astype(jnp.int32), padded_row.astype(jnp.int32),
                      tile_group.astype(jnp.int32), tile_end[-1].astype(jnp.int32))


@jax.custom_vjp
def move_rows(src: jax.Array, index: jax.Array, inverse: jax.Array) -> jax.Array:
    """out[m] = src[index[m]], zero where index[m] is out of range.

    The gradient is a gather too: each source row sums d_out over the rows that read it.

    Args:
      src: [N, D] rows.
      index: [M] int32 source row of each output row; out of range (>= N) gives zeros.
      inverse: [N, J] int32 output rows that read each source row, out of range (>= M)
        where fewer than J do.

    Returns:
      [M, D] in src's dtype.
    """
    return jnp.take(src, index, axis=0, mode="fill", fill_value=0)


def _move_rows_fwd(src, index, inverse):
    return move_rows(src, index, inverse), (index, inverse)


def _move_rows_bwd(residuals, d_out):
    index, inverse = residuals
    d_src = jnp.take(d_out, inverse, axis=0, mode="fill", fill_value=0)  # [N, J, D]
    d_src = d_src[:, 0] if inverse.shape[1] == 1 else d_src.sum(axis=1)
    return d_src, None, None


move_rows.defvjp(_move_rows_fwd, _move_rows_bwd)


def to_tiles(rows: jax.Array, layout: TileLayout) -> jax.Array:
    """rows: [M, D] sorted -> [P // tile, tile, D] padded tiles (zero padding rows)."""
    padded = move_rows(rows, layout.row_source, layout.padded_row[:, None])
    return padded.reshape(layout.tile_group.shape[0], layout.tile_rows, rows.shape[-1])


def from_tiles(tiles: jax.Array, layout: TileLayout) -> jax.Array:
    """tiles: [P // tile, tile, N] -> [M, N] sorted rows (zero past sum(group_sizes))."""
    flat = tiles.reshape(-1, tiles.shape[-1])
    return move_rows(flat, layout.padded_row, layout.row_source[:, None])


def scan_used_tiles(step, carry, xs, used_tiles: jax.Array, skipped):
    """`lax.scan(step, carry, xs)` that runs `step` only on the first `used_tiles` tiles.

    A trailing tile gets `skipped(carry, x) -> (carry, y)` instead (zeros, in the shapes of
    `step`'s y): a layout's padding tiles hold no rows, so they cost a branch, not a tile's
    matmuls. (Not for use inside `shard_map`, where the branches would vary over different
    mesh axes: the expert-parallel modes use "ragged_dot".)
    """
    def maybe_step(carry, inputs):
        index, x = inputs
        return jax.lax.cond(index < used_tiles, step, skipped, carry, x)

    num_tiles = jax.tree.leaves(xs)[0].shape[0]
    return jax.lax.scan(maybe_step, carry, (jnp.arange(num_tiles, dtype=jnp.int32), xs))


def accumulate_by_group(total: jax.Array, running: jax.Array, term: jax.Array,
                        group: jax.Array, same_group: jax.Array):
    """One step of a per-group sum over tiles in group order (a scan's carry update).

    `running` restarts at each new group and is written (not added) to `total[group]` after
    every tile, so the last tile of a group leaves its full sum; no read-modify-write of
    `total` and no scatter-add.

    Args:
      total: [G, ...] per-group sums so far.
      running: [...] this group's sum before this tile.
      term: [...] this tile's contribution.
      group: [] this tile's group.
      same_group: [] bool, this tile's group equals the previous tile's.

    Returns:
      (total, running) after this tile.
    """
    running = jnp.where(same_group, running, 0) + term
    return jax.lax.dynamic_update_index_in_dim(total, running, group, 0), running


def previous_group(tile_group: jax.Array) -> jax.Array:
    """[Nt] the group of the tile before each (-1 for the first)."""
    return jnp.concatenate([jnp.full((1,), -1, tile_group.dtype), tile_group[:-1]])


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

    def tile(carry, inputs):
        d_rhs, running = carry
        rows, group, same, d_rows_out = inputs
        d_rhs, running = accumulate_by_group(d_rhs, running, rows.T @ d_rows_out, group, same)
        return (d_rhs, running), (d_rows_out @ rhs[group].T).astype(tiles.dtype)

    def skipped(carry, inputs):
        return carry, jnp.zeros_like(inputs[0])

    same = tile_group == previous_group(tile_group)
    init = (jnp.zeros_like(rhs), jnp.zeros_like(rhs[0]))
    (d_rhs, _), d_tiles = scan_used_tiles(tile, init, (tiles, tile_group, same, d_out),
                                          used_tiles, skipped)
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
