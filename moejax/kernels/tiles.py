"""Tiles: expert-sorted rows padded to whole tiles, and the scans over them.

Not a data-path stage of its own: the layout that the dropless engine (on CPU) and the "tiled"
grouped matmul (`grouped_matmul.py`) run their experts on. Each group of expert-sorted rows is
padded to a multiple of `tile_rows` (`TileLayout`), so that every tile belongs to one group and
one `[tile, K] @ [K, N]` matmul per tile computes the group's product (docs/methods.md
section 4). Rows move in and out by gathers both ways (`move_rows`); the backward sums each
group's weight gradient over its consecutive tiles (`tile_gradients`), with no scatter-add
into a zeroed buffer. Padding tiles past the last group are skipped (`scan_used_tiles`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from moejax.kernels._common import exclusive_cumsum

MAX_TILE_ROWS = 128  # default tile: rows per group / 2, a power of two in [8, 128]


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
    tile_start = exclusive_cumsum(tiles_per_group)
    tile_end = tile_start + tiles_per_group
    padded_start = tile_start * tile_rows  # [G]
    row_start = exclusive_cumsum(group_sizes)
    rows = jnp.arange(num_rows, dtype=jnp.int32)
    row_group = jnp.searchsorted(row_start + group_sizes, rows, side="right")  # G: past groups
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


def accumulate_by_group(total, running, term, group: jax.Array, same_group: jax.Array):
    """One step of a per-group sum over tiles in group order (a scan's carry update).

    `running` restarts at each new group and is written (not added) to `total[group]` after
    every tile, so the last tile of a group leaves its full sum; no read-modify-write of
    `total` and no scatter-add. Each argument may be a pytree (one sum per leaf).

    Args:
      total: [G, ...] per-group sums so far.
      running: [...] this group's sum before this tile.
      term: [...] this tile's contribution.
      group: [] this tile's group.
      same_group: [] bool, this tile's group equals the previous tile's.

    Returns:
      (total, running) after this tile.
    """
    running = jax.tree.map(lambda run, add: jnp.where(same_group, run, 0) + add, running, term)
    total = jax.tree.map(lambda sums, run: jax.lax.dynamic_update_index_in_dim(sums, run, group, 0),
                         total, running)
    return total, running


def previous_group(tile_group: jax.Array) -> jax.Array:
    """[Nt] the group of the tile before each (-1 for the first)."""
    return jnp.concatenate([jnp.full((1,), -1, tile_group.dtype), tile_group[:-1]])


def tile_gradients(tile_vjp, weights, tiles: jax.Array, tile_group: jax.Array,
                   used_tiles: jax.Array, xs=()):
    """The backward scan of a per-tile expert computation: weight and row gradients.

    Runs `tile_vjp` on the first `used_tiles` tiles (the padding tiles give zero row
    gradients) and sums each group's weight-gradient terms over its consecutive tiles
    (`accumulate_by_group`). Serves the tiled matmul's backward (`grouped_matmul.py`) and the
    fused SwiGLU's (`moejax/moe/experts.py:experts_on_tiles`).

    Args:
      tile_vjp: `(rows [tile, K], group [] int32, x) -> (terms, d_rows [tile, K])`, with x this
        tile's slice of `xs` and terms one group's weight gradient (a pytree shaped like one
        group's slice of `weights`).
      weights: pytree of [G, ...] per-group weights (their shapes and dtypes are used).
      tiles: [Nt, tile, K] the forward's input tiles.
      tile_group: [Nt] int32 group of each tile, non-decreasing.
      used_tiles: [] int32 tiles holding rows.
      xs: pytree of [Nt, ...] further per-tile inputs (cotangents, saved activations).

    Returns:
      (d_weights shaped like `weights`, d_tiles [Nt, tile, K] in tiles' dtype).
    """
    def tile(carry, inputs):
        rows, group, same, x = inputs
        terms, d_rows = tile_vjp(rows, group, x)
        return accumulate_by_group(*carry, terms, group, same), d_rows.astype(rows.dtype)

    def skipped(carry, inputs):
        return carry, jnp.zeros_like(inputs[0])

    same = tile_group == previous_group(tile_group)
    init = (jax.tree.map(jnp.zeros_like, weights),
            jax.tree.map(lambda w: jnp.zeros_like(w[0]), weights))
    (d_weights, _), d_tiles = scan_used_tiles(tile, init, (tiles, tile_group, same, xs),
                                              used_tiles, skipped)
    return d_weights, d_tiles
