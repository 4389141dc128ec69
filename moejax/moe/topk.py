"""Top-k MoE block (Mixtral layout): router -> dispatch plan -> engine -> combine.

`y = sum_{e in TopK} g_e FFN_e(x)` (docs/methods.md section 3). Returns `(y, RoutingRecord)`
with one router on the record's leading axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.kernels import pairwise_cosine, pairwise_cosine_sorted, use_pallas
from moejax.moe.combine import combine
from moejax.moe.engines import ENGINES
from moejax.moe.experts import Experts
from moejax.moe.router import Router, Routing
from moejax.moe.spec import MoESpec
from moejax.record import RoutingRecord, token_subset


def make_record(routing: Routing, plan, pair_cos: jax.Array | None) -> RoutingRecord:
    """One router's record, with a leading router axis of size 1."""
    num_experts = routing.logits.shape[-1]
    top_k = routing.expert_idx.shape[-1]
    record = RoutingRecord(
        logits=routing.logits,
        probs=routing.probs,
        expert_idx=routing.expert_idx,
        gates=jnp.where(plan.kept, routing.gates, 0.0),
        kept=plan.kept,
        tokens_per_expert=plan.tokens_per_expert,
        dropped=plan.dropped,
        num_experts=jnp.asarray(num_experts, jnp.int32),
        top_k=jnp.asarray(top_k, jnp.int32),
        pair_cos=pair_cos,
    )
    return jax.tree.map(lambda a: a[None], record)


def routed_experts_forward(x: jax.Array, routing: Routing, weights, spec: MoESpec,
                           engine=None):
    """Plan, engine and combine for routed experts.

    Args:
      x: [T, D] tokens in the compute dtype.
      routing: the router's output for x.
      weights: ExpertWeights in the compute dtype.
      spec: the layer's options (engine and its options, record_cosine, cosine_max_tokens).
      engine: None for `ENGINES[spec.engine]` (its plan, its options bound), or an engine
        object with `prepare_plan(plan)` and the engine contract
        (`moejax.parallel.ExpertParallel`), which prepares `ENGINES[spec.engine]`'s plan
        (e.g. marks extra drops); the prepared plan is the one the record reports.

    Returns:
      (y [T, D], record with R = 1).
    """
    kind = ENGINES[spec.engine]
    plan = kind.plan(routing.expert_idx, weights.w_gate.shape[0], spec.capacity_factor,
                     routing.dispatch)
    if engine is None:
        engine = kind.bind(spec)
    else:
        plan = engine.prepare_plan(plan)
    with_z = spec.record_cosine and spec.cosine_source == "activation"
    subset = token_subset(x.shape[0], spec.cosine_max_tokens) if spec.record_cosine else None
    # where the cosine reads z: its rows in the engine's layout (the Pallas kernel, or only a
    # subset of tokens), else z gathered to [T, K, F] slots
    layout = "sorted" if use_pallas(spec.implementation) or subset is not None else "slots"
    y_slots, z = engine(x, plan, weights, activations=layout if with_z else None)
    y = combine(y_slots, routing.gates, plan.kept)
    pair_cos = None
    if with_z and layout == "sorted":
        index = z.index if subset is None else z.index[subset]
        pair_cos = pairwise_cosine_sorted(z.rows, index, implementation=spec.implementation)
    elif spec.record_cosine:
        compared = z if with_z else y_slots
        if subset is not None:
            compared = compared[subset]
        pair_cos = pairwise_cosine(compared, implementation=spec.implementation)
    return y, make_record(routing, plan, pair_cos)


class TopKMoE(nnx.Module):
    """Routed top-k experts: x [T, D] -> (y [T, D], record with R = 1)."""

    def __init__(self, d_model: int, spec: MoESpec, *, rngs: nnx.Rngs, engine=None):
        self.spec = spec
        self.engine = engine  # None: ENGINES[spec.engine]; else e.g. an ExpertParallel
        self.router = Router(d_model, spec.routed_experts, spec.routed_top_k, spec.router,
                             rngs=rngs)
        self.experts = Experts(spec.routed_experts, d_model, spec.routed_d_hidden, rngs=rngs)

    def __call__(self, x: jax.Array, *, disable_top1: bool = False):
        """x: [T, D] compute dtype; disable_top1: see `route`."""
        routing = self.router(x, implementation=self.spec.implementation,
                              disable_top1=disable_top1)
        return routed_experts_forward(x, routing, self.experts.weights(x.dtype), self.spec,
                                      self.engine)

    def routers(self) -> list[Router]:
        """This block's routers in record order."""
        return [self.router]
