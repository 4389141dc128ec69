"""DeepSeekMoE block: fine-grained routed experts plus always-on shared experts.

`y = sum_s FFN^shared_s(x) + sum_{e in TopK} g_e FFN_e(x)` (methods.md section 3), or the
learned 2-way mix with `shared_mix="softmax"`. Fine-graining (`granularity`) is in MoESpec.
"""

from __future__ import annotations

import jax
from flax import nnx

from moejax.layers.moe_block import MoESpec, TopKMoE
from moejax.layers.shared_experts import SharedExperts


class DeepSeekMoE(nnx.Module):
    """x [T, D] -> (y [T, D], record with R = 1); the record covers the routed experts."""

    def __init__(self, d_model: int, spec: MoESpec, *, rngs: nnx.Rngs, engine=None):
        if spec.num_shared_experts < 1:
            raise ValueError(
                f"moe.num_shared_experts={spec.num_shared_experts}: DeepSeekMoE needs >= 1 "
                "(use the top-k block for none)"
            )
        self.routed = TopKMoE(d_model, spec, rngs=rngs, engine=engine)
        self.shared = SharedExperts(d_model, spec.shared_width, spec.shared_mix, rngs=rngs)

    def __call__(self, x: jax.Array, **kwargs):
        """x: [T, D] compute dtype; kwargs go to the router (exclude, disable_top1)."""
        routed, record = self.routed(x, **kwargs)
        return self.shared(x, routed), record

    def routers(self):
        """This block's routers in record order."""
        return self.routed.routers()
