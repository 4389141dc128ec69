"""Kernels: the hot spots of the MoE data path, each behind one public function.

`kernels/` imports nothing else from moejax.
"""

from moejax.kernels.grouped_matmul import grouped_matmul
from moejax.kernels.pairwise_cosine import pairwise_cosine

__all__ = ["grouped_matmul", "pairwise_cosine"]
