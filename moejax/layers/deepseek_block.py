"""DeepSeekMoE block: fine-grained routed experts plus always-on shared experts.

`y = sum_s FFN^shared_s(x) + sum_{e in TopK} g_e FFN_e(x)` (methods.md section 3). The S
shared experts are stored as one SwiGLU of width S * shared_d_hidden, which computes
exactly their sum (HF DeepSeek's `shared_experts` layout).
"""

from __future__ import annotations

import jax
from flax import nnx

from moejax.layers.combine import mix_shared
from moejax.layers.ffn import SwiGLU
from moejax.layers.moe_block import MoESpec, TopKMoE


class DeepSeekMoE(nnx.Module):
    """x [T, D] -> (y [T, D], record with R = 1); the record covers the routed experts."""

    def __init__(self, d_model: int, spec: MoESpec, *, rngs: nnx.Rngs):
        if spec.num_shared_experts < 1:
            raise ValueError(
                f"moe.num_shared_experts={spec.num_shared_experts}: DeepSeekMoE needs >= 1 "
                "(use the top-k block for none)"
            )
        self.routed = TopKMoE(d_model, spec, rngs=rngs)
        self.shared = SwiGLU(d_model, spec.shared_width, rngs=rngs)

    def __call__(self, x: jax.Array, *, exclude: jax.Array | None = None):
        routed, record = self.routed(x, exclude=exclude)
        return mix_shared(routed, self.shared(x)), record

    def routers(self):
        """This block's routers in record order."""
        return self.routed.routers()
