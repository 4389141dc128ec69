"""Top-k MoE block (Mixtral layout): router -> dispatch plan -> engine -> combine.

`y = sum_{e in TopK} g_e FFN_e(x)` (methods.md section 3). Returns `(y, RoutingRecord)`
with one router on the record's leading axis.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.kernels import (
    KERNEL_IMPLEMENTATIONS,
    pairwise_cosine,
    pairwise_cosine_sorted,
    use_pallas,
)
from moejax.layers.combine import combine
from moejax.layers.dispatch import SortedActivations, capacity_for, make_plan
from moejax.layers.engines import ENGINES
from moejax.layers.experts import Experts
from moejax.layers.router import Router, RouterSpec, Routing
from moejax.record import RoutingRecord


@dataclasses.dataclass(frozen=True)
class MoESpec:
    """Options of an MoE layer.

    Attributes:
      num_experts: routed experts E before fine-graining.
      top_k: experts chosen per token k before fine-graining.
      d_hidden: expert hidden width F before fine-graining.
      granularity: fine-grained factor m (DeepSeekMoE): m*E experts of width F/m, m*k chosen.
      num_shared_experts: S always-on shared experts (0 = plain top-k MoE).
      shared_d_hidden: hidden width of each shared expert (None: the routed expert width F/m).
      sub_d_hidden: CartesianMoE sub-expert width (None: d_hidden // 2, "half-width").
      shared_mix: how shared experts join the routed output: "sum" (DeepSeekMoE) or
        "softmax" (a learned 2-way softmax gate, CartesianMoE).
      engine: "dense", "capacity" or "dropless".
      kernel: "auto", "pallas" or "jnp": the fused top-k dispatch and pairwise-cosine
        kernels (`moejax.kernels`) or their jnp references; "auto" is jnp until the Pallas
        kernels have been checked on a GPU.
      capacity_factor: C = ceil(capacity_factor * T * k / E) for the capacity engine.
      record_cosine: put each token's [K, K] cosine of its chosen experts in the record.
      cosine_source: what that cosine compares: "activation" (the SwiGLU z, for the
        specialization loss) or "output" (FFN_e(x), for the orthogonality baseline).
      router: routing options.
    """

    num_experts: int = 8
    top_k: int = 2
    d_hidden: int = 256
    granularity: int = 1
    num_shared_experts: int = 0
    shared_d_hidden: int | None = None
    sub_d_hidden: int | None = None
    shared_mix: str = "sum"
    engine: str = "dropless"
    kernel: str = "auto"
    capacity_factor: float = 1.25
    record_cosine: bool = False
    cosine_source: str = "activation"
    router: RouterSpec = dataclasses.field(default_factory=RouterSpec)

    def __post_init__(self):
        if isinstance(self.router, dict):
            object.__setattr__(self, "router", RouterSpec(**self.router))
        if self.granularity < 1 or self.d_hidden % self.granularity:
            raise ValueError(
                f"moe.d_hidden={self.d_hidden} is not divisible by moe.granularity="
                f"{self.granularity}"
            )
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(
                f"moe.top_k={self.top_k} must be in [1, moe.num_experts={self.num_experts}]"
            )
        if self.engine not in ENGINES:
            raise ValueError(f"moe.engine={self.engine!r}; allowed: {', '.join(ENGINES)}")
        if self.kernel not in KERNEL_IMPLEMENTATIONS:
            raise ValueError(f"moe.kernel={self.kernel!r}; allowed: "
                             f"{', '.join(KERNEL_IMPLEMENTATIONS)}")
        if self.cosine_source not in ("activation", "output"):
            raise ValueError(f"moe.cosine_source={self.cosine_source!r}; allowed: activation, "
                             "output")
        if self.shared_mix not in ("sum", "softmax"):
            raise ValueError(f"moe.shared_mix={self.shared_mix!r}; allowed: sum, softmax")
        if self.capacity_factor <= 0:
            raise ValueError(f"moe.capacity_factor={self.capacity_factor} must be > 0")
        if self.num_shared_experts < 0:
            raise ValueError(f"moe.num_shared_experts={self.num_shared_experts} must be >= 0")
        self.router.check(self.routed_experts, self.routed_top_k)

    @property
    def routed_experts(self) -> int:
        return self.num_experts * self.granularity

    @property
    def routed_top_k(self) -> int:
        return self.top_k * self.granularity

    @property
    def routed_d_hidden(self) -> int:
        return self.d_hidden // self.granularity

    @property
    def shared_width(self) -> int:
        """Total hidden width of the shared experts (S * shared_d_hidden)."""
        each = self.shared_d_hidden or self.routed_d_hidden
        return self.num_shared_experts * each


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
      spec: the layer's options (engine, capacity, record_cosine).
      engine: None for `ENGINES[spec.engine]`, or an engine object with `prepare_plan(plan)`
        and the engines' call signature (`moejax.parallel.ExpertParallel`); the plan it
        prepares (e.g. with extra drops marked) is the one the record reports.

    Returns:
      (y [T, D], record with R = 1).
    """
    num_experts = weights.w_gate.shape[0]
    top_k = routing.expert_idx.shape[1]
    capacity = None
    if spec.engine == "capacity":
        capacity = capacity_for(x.shape[0], top_k, num_experts, spec.capacity_factor)
    plan = make_plan(routing.expert_idx, num_experts, capacity, routing.dispatch)
    if engine is None:
        engine = ENGINES[spec.engine]
    else:
        plan = engine.prepare_plan(plan)
    with_z = spec.record_cosine and spec.cosine_source == "activation"
    y_slots, z = engine(x, plan, weights, with_activations=with_z,
                        sorted_activations=with_z and use_pallas(spec.kernel))
    y = combine(y_slots, routing.gates, plan.kept)
    pair_cos = None
    if isinstance(z, SortedActivations):  # the kernel reads z where the engine left it
        pair_cos = pairwise_cosine_sorted(z.rows, z.index, implementation=spec.kernel)
    elif spec.record_cosine:
        pair_cos = pairwise_cosine(z if with_z else y_slots, implementation=spec.kernel)
    return y, make_record(routing, plan, pair_cos)


class TopKMoE(nnx.Module):
    """Routed top-k experts: x [T, D] -> (y [T, D], record with R = 1)."""

    def __init__(self, d_model: int, spec: MoESpec, *, rngs: nnx.Rngs, engine=None):
        self.spec = spec
        self.engine = engine  # None: ENGINES[spec.engine]; else e.g. an ExpertParallel
        self.router = Router(d_model, spec.routed_experts, spec.routed_top_k, spec.router,
                             rngs=rngs)
        self.experts = Experts(spec.routed_experts, d_model, spec.routed_d_hidden, rngs=rngs)

    def __call__(self, x: jax.Array, **router_kwargs):
        """x: [T, D] compute dtype; router_kwargs (exclude, disable_top1) go to the router."""
        routing = self.router(x, kernel=self.spec.kernel, **router_kwargs)
        return routed_experts_forward(x, routing, self.experts.weights(x.dtype), self.spec,
                                      self.engine)

    def routers(self) -> list[Router]:
        """This block's routers in record order."""
        return [self.router]
