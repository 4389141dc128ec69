"""Kernels: the hot spots of the MoE data path, each behind one public function.

Each kernel takes `implementation=` one of KERNEL_IMPLEMENTATIONS: "jnp" (the reference),
"pallas" (the Pallas kernel with a custom_vjp; interpret mode on CPU) or "auto" (the jnp
reference for now: the GPU path has not yet run on a GPU; see `_common.py`). Anything else
raises ValueError; `use_pallas(implementation)` says which one runs. `grouped_matmul` has its
own implementations (GROUPED_MATMUL_IMPLEMENTATIONS: tiled on CPU, ragged_dot or tokamax on
GPU). `kernels/` imports
nothing else from moejax.
"""

from moejax.kernels._common import KERNEL_IMPLEMENTATIONS, use_pallas
from moejax.kernels.grouped_matmul import (
    GROUPED_MATMUL_IMPLEMENTATIONS,
    grouped_matmul,
    resolve_grouped_matmul,
)
from moejax.kernels.pairwise_cosine import pairwise_cosine, pairwise_cosine_sorted
from moejax.kernels.topk_dispatch import TopKDispatch, topk_dispatch

__all__ = [
    "GROUPED_MATMUL_IMPLEMENTATIONS",
    "KERNEL_IMPLEMENTATIONS",
    "TopKDispatch",
    "grouped_matmul",
    "pairwise_cosine",
    "pairwise_cosine_sorted",
    "resolve_grouped_matmul",
    "topk_dispatch",
    "use_pallas",
]
