"""DeepSeekMoE block: fine-grained routed experts plus always-on shared experts.

`y = sum_s FFN^shared_s(x) + sum_{e in TopK} g_e FFN_e(x)` (docs/methods.md section 3), or the
learned 2-way mix with `shared_mix="softmax"`, or Qwen2-MoE's sigmoid gate with
`shared_mix="sigmoid"`. Fine-graining (`granularity`) is in MoESpec.
"""

from __future__ import annotations

import jax
from flax import nnx

from moejax.moe.shared import SharedExperts
from moejax.moe.spec import MoESpec
from moejax.moe.topk import TopKMoE


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

    def __call__(self, x: jax.Array, *, disable_top1: bool = False):
        """x: [T, D] compute dtype; disable_top1: see `moejax.moe.router.route`."""
        routed, record = self.routed(x, disable_top1=disable_top1)
        return self.shared(x, routed), record

    def routers(self):
        """This block's routers in record order."""
        return self.routed.routers()
