"""Kernels: the hot spots of the MoE data path, each behind one public function.

Each kernel takes `implementation=` one of KERNEL_IMPLEMENTATIONS: "jnp" (the reference),
"pallas" (the Pallas kernel with a custom_vjp; interpret mode on CPU) or "auto" (Pallas on
GPU, jnp elsewhere). Anything else raises ValueError. `kernels/` imports nothing else from
moejax.
"""

from moejax.kernels._common import KERNEL_IMPLEMENTATIONS
from moejax.kernels.grouped_matmul import grouped_matmul
from moejax.kernels.pairwise_cosine import pairwise_cosine, pairwise_cosine_sorted
from moejax.kernels.topk_dispatch import TopKDispatch, topk_dispatch

__all__ = [
    "KERNEL_IMPLEMENTATIONS",
    "TopKDispatch",
    "grouped_matmul",
    "pairwise_cosine",
    "pairwise_cosine_sorted",
    "topk_dispatch",
]
