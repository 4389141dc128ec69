"""DecoderSpec: the decoder LM's options, checked at construction (`config.model`).

Kept apart from the modules (`decoder.py`) so that configs, the HF family records and the
planners read a model's options without building one.
"""

from __future__ import annotations

import dataclasses
import functools
from types import MappingProxyType

import jax
import jax.numpy as jnp

from moejax.layers.attention import ATTENTION_IMPLEMENTATIONS
from moejax.layers.mla_spec import MLASpec, RopeScaling
from moejax.models.hf_families import FAMILIES
from moejax.moe.router import RouterSpec
from moejax.moe.spec import MoESpec
from moejax.options import check_choice, check_int, check_known, check_range, spec_from_mapping

REMAT_POLICIES = MappingProxyType({
    "none": None,  # no rematerialisation: keep everything
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only each layer's input
    # keep the attention and dense-FFN matmul outputs; recompute the routed experts
    "save_dots_except_experts": jax.checkpoint_policies.save_only_these_names(
        "attention_qkv", "attention_out", "ffn_in", "ffn_out"),
})
BLOCK_KINDS = ("topk", "deepseek", "cartesian")  # model.block (decoder.BLOCKS)
QK_NORM_AXES = ("head", "all")  # model.qk_norm_axes
DTYPES = MappingProxyType(
    {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}
)


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    """Options of the decoder LM (defaults: a small Mixtral-style model).

    Attributes:
      vocab_size: V.
      d_model: D.
      num_layers: decoder layers.
      num_heads: query heads N.
      num_kv_heads: key/value heads (N for no grouping).
      head_dim: H (None: d_model // num_heads).
      d_ff: hidden width of the dense FFN layers.
      rope_theta: RoPE base.
      norm_eps: RMSNorm epsilon.
      qk_norm: RMS-normalise the queries and keys before RoPE, with learned weights (Qwen3-MoE,
        OLMoE).
      qk_norm_axes: what one norm covers: "head" (each head's H coordinates, weights [H];
        Qwen3-MoE) or "all" (the whole projection, weights [N*H] and [K*H]; OLMoE).
      qkv_bias: the q, k and v projections have biases (Qwen2-MoE).
      clip_qkv: clamp queries, keys (after their norms) and values to [-c, c] (OLMoE); None:
        off.
      mla: Multi-head Latent Attention's options (DeepSeek-V2/V3, `MLASpec`) instead of
        grouped-query attention; None: GQA. With MLA, num_kv_heads and head_dim are unused.
      rope_scaling: YaRN RoPE scaling (`RopeScaling`); None: plain RoPE.
      first_dense_layers: leading layers with a dense FFN.
      moe_every: 1 = every later layer is MoE, 2 = every other one, ...
      block: "topk" (Mixtral), "deepseek" (shared + fine-grained experts) or "cartesian"
        (two routed sub-layers with their own norms and residuals; 2 routers per layer).
      dtype: compute dtype, "float32" or "bfloat16"; "float64" exists for gradient checks
        under `jax.enable_x64`.
      param_dtype: the parameters' dtype in memory, "float32" or "bfloat16" (2 bytes per
        parameter: a bf16 checkpoint imported, sampled or evaluated at its own size; training
        keeps float32 master weights, `train.master_weights`); "float64" for gradient checks.
      attention: `jax.nn.dot_product_attention`'s implementation: "xla" or "cudnn" (GPU).
      remat: rematerialisation per layer, one of REMAT_POLICIES: "none", "full" or
        "save_dots_except_experts".
      scan_layers: stack the layers' parameters over depth and run them with `nnx.scan`
        (see the module docstring); False: one module per layer in a Python loop.
      hf_family: the Hugging Face family this model is written as (`moejax-hf export`), a
        key of `hf_families.FAMILIES` ("mixtral", "qwen3_moe"); an import sets it from
        config.json's `model_type`. It does not change the function.
      moe: the MoE layers' options.
    """

    vocab_size: int = 259
    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int | None = None
    d_ff: int = 512
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qk_norm: bool = False
    qk_norm_axes: str = "head"
    qkv_bias: bool = False
    clip_qkv: float | None = None
    mla: MLASpec | None = None
    rope_scaling: RopeScaling | None = None
    first_dense_layers: int = 0
    moe_every: int = 1
    block: str = "topk"
    dtype: str = "float32"
    param_dtype: str | None = "float32"
    attention: str = "xla"
    remat: str = "none"
    scan_layers: bool = True
    hf_family: str = "mixtral"
    moe: MoESpec = dataclasses.field(default_factory=MoESpec)

    def __post_init__(self):
        if isinstance(self.moe, dict):
            object.__setattr__(self, "moe", MoESpec(**self.moe))
        for name, cls in (("mla", MLASpec), ("rope_scaling", RopeScaling)):
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, spec_from_mapping(cls, getattr(self, name),
                                                                 f"model.{name}"))
        check_choice("model.block", self.block, BLOCK_KINDS)
        check_choice("model.attention", self.attention, ATTENTION_IMPLEMENTATIONS)
        check_choice("model.remat", self.remat, REMAT_POLICIES)
        check_choice("model.dtype", self.dtype, DTYPES)
        if self.param_dtype is None:  # the default config's placeholder
            object.__setattr__(self, "param_dtype", "float32")
        check_choice("model.param_dtype", self.param_dtype, DTYPES)
        check_choice("model.qk_norm_axes", self.qk_norm_axes, QK_NORM_AXES)
        check_choice("model.hf_family", self.hf_family, FAMILIES)
        self._check_sizes()
        if self.head_dim is None and self.d_model % self.num_heads:
            raise ValueError(
                f"model.d_model={self.d_model} is not divisible by model.num_heads="
                f"{self.num_heads} (or set model.head_dim)"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model.num_heads={self.num_heads} is not a multiple of model.num_kv_heads="
                f"{self.num_kv_heads}"
            )
        if self.resolved_head_dim % 2:
            raise ValueError(f"model.head_dim={self.resolved_head_dim} must be even (RoPE "
                             "rotates pairs of coordinates)")

    def _check_sizes(self) -> None:
        """Every size an integer >= 1 and the float options finite and > 0, each error naming
        its option ("model.d_model=-32; allowed: an integer >= 1"), before any shape uses
        them."""
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads",
                     "d_ff", "moe_every"):
            check_int(f"model.{name}", getattr(self, name))
        check_int("model.head_dim", self.head_dim, optional=True)
        check_int("model.first_dense_layers", self.first_dense_layers, 0, self.num_layers)
        check_range("model.rope_theta", self.rope_theta, 0.0, low_open=True)
        check_range("model.norm_eps", self.norm_eps, 0.0, low_open=True)
        if self.clip_qkv is not None:
            check_range("model.clip_qkv", self.clip_qkv, 0.0, low_open=True)

    @functools.cached_property
    def _abstract_split(self):
        """`nnx.split` of `Decoder(self)` from shapes alone, traced on first use and kept on
        this spec object (`weights.abstract_decoder` reads it; no module-level cache)."""
        from flax import nnx

        from moejax.models.decoder import Decoder  # the modules import this module

        return nnx.split(nnx.eval_shape(lambda: Decoder(self, rngs=nnx.Rngs(0))))

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.num_heads

    def is_moe_layer(self, layer: int) -> bool:
        offset = layer - self.first_dense_layers
        return offset >= 0 and offset % self.moe_every == 0

    @property
    def num_routers(self) -> int:
        """R, the routing record's router axis: one per MoE layer, two per CartesianMoE layer."""
        per_layer = 2 if self.block == "cartesian" else 1
        return per_layer * sum(self.is_moe_layer(i) for i in range(self.num_layers))


def layer_stacks(spec: DecoderSpec) -> tuple[tuple[int, int, int], ...]:
    """The scanned layout's stacks, in depth order: (first layer, unit size, repeats).

    Stack s holds layers `first + r * unit + j` for r < repeats, j < unit; all repeats of a
    unit have the same layer kinds, so one traced unit serves them all.
    """
    dense, period = spec.first_dense_layers, spec.moe_every
    repeats, leftover = divmod(spec.num_layers - dense, period)
    stacks = ((0, 1, dense), (dense, period, repeats), (dense + repeats * period, leftover, 1))
    return tuple(stack for stack in stacks if stack[1] and stack[2])


def decoder_spec_from_config(model_config) -> DecoderSpec:
    """Builds a DecoderSpec from a (nested) mapping such as `config.model`.

    An unknown key raises ValueError naming it.
    """
    fields = dict(model_config)
    moe = dict(fields.pop("moe", {}))
    for name, cls in (("mla", MLASpec), ("rope_scaling", RopeScaling)):
        if fields.get(name) is not None:
            fields[name] = spec_from_mapping(cls, fields[name], f"model.{name}")
    router = spec_from_mapping(RouterSpec, moe.pop("router", {}), "model.moe.router")
    check_known(MoESpec, moe, "model.moe")
    check_known(DecoderSpec, fields, "model")
    return DecoderSpec(**fields, moe=MoESpec(**moe, router=router))


