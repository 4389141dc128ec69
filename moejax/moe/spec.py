"""MoESpec: the options of an MoE layer (every block type), checked at construction."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from moejax.kernels import KERNEL_IMPLEMENTATIONS, check_grouped_matmul
from moejax.moe.combine import SHARED_MIXES
from moejax.moe.engines import ENGINES
from moejax.moe.router import RouterSpec
from moejax.options import check_choice, check_int, check_range


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
      shared_mix: how shared experts join the routed output, a key of
        `combine.SHARED_MIXES`: "sum" (routed + shared, DeepSeekMoE), "softmax" (a learned
        2-way gate c = softmax(u W_c + b_c): c0 routed + c1 shared, CartesianMoE) or
        "sigmoid" (routed + sigmoid(u w_c) shared, w_c = `mix_kernel [D, 1]` without bias:
        Qwen2-MoE's `shared_expert_gate`).
      engine: a key of `ENGINES` (`moe/engines/__init__.py`): "dense", "capacity" or
        "dropless".
      implementation: "auto", "pallas" or "jnp": the fused top-k dispatch and
        pairwise-cosine kernels (`moejax.kernels`) or their jnp references; "auto" is jnp
        until the Pallas kernels have been checked on a GPU. (Was `kernel`, a name the
        router's weight `Router.kernel` also has.)
      grouped_matmul: the dropless engine's grouped matmul (`kernels.grouped_matmul`):
        "auto" (tiled on CPU; tokamax on GPU when installed, else ragged_dot), "tiled",
        "ragged_dot" or "tokamax".
      capacity_factor: C = ceil(capacity_factor * T * k / E) for the capacity engine.
      record_cosine: put each token's [K, K] cosine of its chosen experts in the record.
      cosine_source: what that cosine compares: "activation" (the SwiGLU z, for the
        specialization loss) or "output" (FFN_e(x), for the orthogonality baseline).
      cosine_max_tokens: record that cosine for a fixed, evenly spaced subset of at most this
        many tokens of the layer's T (None: all), gathering only their activations (set from
        `loss.sp_max_tokens` by the trainer).
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
    implementation: str = "auto"
    grouped_matmul: str = "auto"
    capacity_factor: float = 1.25
    record_cosine: bool = False
    cosine_source: str = "activation"
    cosine_max_tokens: int | None = None
    router: RouterSpec = dataclasses.field(default_factory=RouterSpec)

    # old option name -> new one: a config that still uses the old name gets an error naming
    # the new one (`moejax/options.py`)
    renamed_options: ClassVar[dict] = {"kernel": "implementation"}

    def __post_init__(self):
        if isinstance(self.router, dict):
            object.__setattr__(self, "router", RouterSpec(**self.router))
        for name in ("num_experts", "top_k", "d_hidden", "granularity"):
            check_int(f"moe.{name}", getattr(self, name))
        if self.top_k > self.num_experts:
            raise ValueError(
                f"moe.top_k={self.top_k} must be in [1, moe.num_experts={self.num_experts}]"
            )
        if self.d_hidden % self.granularity:
            raise ValueError(
                f"moe.d_hidden={self.d_hidden} is not divisible by moe.granularity="
                f"{self.granularity}"
            )
        check_int("moe.num_shared_experts", self.num_shared_experts, 0)
        for name in ("shared_d_hidden", "sub_d_hidden", "cosine_max_tokens"):
            check_int(f"moe.{name}", getattr(self, name), optional=True)
        check_range("moe.capacity_factor", self.capacity_factor, 0.0, low_open=True)
        check_choice("moe.engine", self.engine, ENGINES)
        check_choice("moe.implementation", self.implementation, KERNEL_IMPLEMENTATIONS)
        check_grouped_matmul(self.grouped_matmul, "moe.grouped_matmul")
        check_choice("moe.cosine_source", self.cosine_source, ("activation", "output"))
        check_choice("moe.shared_mix", self.shared_mix, SHARED_MIXES)
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
