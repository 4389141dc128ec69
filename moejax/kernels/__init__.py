"""Kernels: the hot spots of the MoE data path, each behind one public function.

Each kernel takes `implementation=` one of KERNEL_IMPLEMENTATIONS: "jnp" (the reference),
"pallas" (the Pallas kernel with a custom_vjp; interpret mode on CPU) or "auto" (the jnp
reference for now: the GPU path has not yet run on a GPU; see `_common.py`). Anything else
raises ValueError; `use_pallas(implementation)` says which one runs. `grouped_matmul` has its
own implementations (GROUPED_MATMUL_IMPLEMENTATIONS: tiled on CPU, ragged_dot or tokamax on
GPU). The tile machinery (`tiles.py`: `TileLayout`, `move_rows`, the scans over tiles) is
shared by the tiled grouped matmul and the engines; `exclusive_cumsum` gives where each group
of a count vector starts. `kernels/` imports nothing else from moejax but `moejax.options`.
"""

from moejax.kernels._common import KERNEL_IMPLEMENTATIONS, exclusive_cumsum, use_pallas
from moejax.kernels.grouped_matmul import (
    GROUPED_MATMUL_IMPLEMENTATIONS,
    check_grouped_matmul,
    grouped_matmul,
    resolve_grouped_matmul,
)
from moejax.kernels.pairwise_cosine import pairwise_cosine, pairwise_cosine_sorted
from moejax.kernels.tiles import (
    MAX_TILE_ROWS,
    TileLayout,
    accumulate_by_group,
    default_tile_rows,
    from_tiles,
    move_rows,
    previous_group,
    scan_used_tiles,
    tile_gradients,
    tile_layout,
    to_tiles,
)
from moejax.kernels.topk_dispatch import TopKDispatch, topk_dispatch

__all__ = [
    "GROUPED_MATMUL_IMPLEMENTATIONS",
    "KERNEL_IMPLEMENTATIONS",
    "MAX_TILE_ROWS",
    "TileLayout",
    "TopKDispatch",
    "accumulate_by_group",
    "check_grouped_matmul",
    "default_tile_rows",
    "exclusive_cumsum",
    "from_tiles",
    "grouped_matmul",
    "move_rows",
    "pairwise_cosine",
    "pairwise_cosine_sorted",
    "previous_group",
    "resolve_grouped_matmul",
    "scan_used_tiles",
    "tile_gradients",
    "tile_layout",
    "to_tiles",
    "topk_dispatch",
    "use_pallas",
]
