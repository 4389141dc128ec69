"""The Hugging Face tensor table: each HF tensor of a family <-> a moejax `Decoder` parameter.

torch `Linear` weights are [out, in]; moejax stores [in, out] with heads split out. The rows
below (`TOP_TENSORS`, `LAYER_TENSORS`) drive the expected names and shapes, the import
(`convert_hf.from_hf`) and the export (`convert_hf.to_hf`) alike, in the hub's per-expert
layout, as `save_pretrained` writes it. Which rows a layer has is data (`WHEN`): attention
(grouped-query, with q/k/v biases or q/k norms per head or over the whole projection; or
Multi-head Latent Attention), dense FFN or MoE, routed experts with a selection bias, shared
experts with a sigmoid gate.

| HF tensor (torch layout)                               | moejax parameter                    |
|--------------------------------------------------------|-------------------------------------|
| model.embed_tokens.weight [V, D]                       | embed.embedding [V, D]              |
| model.layers.{i}.self_attn.q_proj.weight [N*H, D]      | layers[i].attn.w_q [D, N, H]        |
| model.layers.{i}.self_attn.o_proj.weight [D, N*H]      | layers[i].attn.w_o [N, H, D]        |
| ...self_attn.q_proj.bias [N*H]                         | ...attn.b_q [N, H]                  |
| ...self_attn.kv_b_proj.weight [N*(nope+v), C]          | ...attn.w_kv_b [C, N, nope+v]       |
| model.layers.{i}.{moe}.gate.weight [E, D]              | ...{routed}.router.kernel [D, E]    |
| ...{moe}.gate.e_score_correction_bias [E]              | ...{routed}.router.bias [E]         |
| ...{moe}.experts.{e}.{gate}.weight [M, D]              | ...{routed}.experts.w_gate[e] [D, M]|
| ...{moe}.{shared}.gate_proj.weight [S, D]              | ...ffn.block.shared.ffn.w_gate      |
| lm_head.weight [V, D]                                  | head.kernel [D, V]                  |

(every row: `LAYER_TENSORS`). {moe}, {gate}, {up}, {down}, {shared}, {shared_gate}: the
family's names (Mixtral `block_sparse_moe`, `w1`, `w3`, `w2`; the others `mlp`, `gate_proj`,
`up_proj`, `down_proj`; DeepSeek `shared_experts`; Qwen2-MoE `shared_expert`,
`shared_expert_gate`); {routed}: the block's routed experts (`ROUTED`). HF's q/k/v rows are
head-major (row `n * H + h`), so `w_q = q_proj.T.reshape(D, N, H)`. The tables give the
unrolled layout (`model.scan_layers=False`); a scanned model's stacks are filled layer by
layer (`layout.stack_params`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from types import MappingProxyType

from moejax.models.decoder import DecoderSpec
from moejax.models.hf_families import HFFamily


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One row of the tensor table.

    Attributes:
      hf: the HF name (after `model.layers.{i}.` in LAYER_TENSORS), with the family's
        placeholders {moe}, {gate}, {up}, {down}; `{e}` makes it one tensor per routed
        expert, stacked on axis 0 of the moejax parameter.
      ours: the dotted path of the moejax parameter (in the layer's dict in LAYER_TENSORS).
      layout: how the torch array maps to ours, a LAYOUTS key.
      shape: the torch shape in dimension symbols (`dims`), e.g. ("N*H", "D").
      when: which layers have it, a WHEN key.
    """

    hf: str
    ours: str
    layout: str
    shape: tuple[str, ...]
    when: str = "always"


TOP_TENSORS = (
    Tensor("model.embed_tokens.weight", "embed.embedding", "same", ("V", "D")),
    Tensor("model.norm.weight", "final_norm.weight", "same", ("D",)),
    Tensor("lm_head.weight", "head.kernel", "linear", ("V", "D")),
)
LAYER_TENSORS = (
    Tensor("input_layernorm.weight", "attn_norm.weight", "same", ("D",)),
    Tensor("self_attn.q_proj.weight", "attn.w_q", "heads_in", ("N*H", "D"), "gqa"),
    Tensor("self_attn.k_proj.weight", "attn.w_k", "heads_in", ("K*H", "D"), "gqa"),
    Tensor("self_attn.v_proj.weight", "attn.w_v", "heads_in", ("K*H", "D"), "gqa"),
    Tensor("self_attn.o_proj.weight", "attn.w_o", "heads_out", ("D", "N*H"), "gqa"),
    Tensor("self_attn.q_proj.bias", "attn.b_q", "heads_bias", ("N*H",), "qkv_bias"),
    Tensor("self_attn.k_proj.bias", "attn.b_k", "heads_bias", ("K*H",), "qkv_bias"),
    Tensor("self_attn.v_proj.bias", "attn.b_v", "heads_bias", ("K*H",), "qkv_bias"),
    Tensor("self_attn.q_norm.weight", "attn.q_norm.weight", "same", ("H",), "qk_norm_head"),
    Tensor("self_attn.k_norm.weight", "attn.k_norm.weight", "same", ("H",), "qk_norm_head"),
    Tensor("self_attn.q_norm.weight", "attn.q_norm.weight", "same", ("N*H",), "qk_norm_all"),
    Tensor("self_attn.k_norm.weight", "attn.k_norm.weight", "same", ("K*H",), "qk_norm_all"),
    # Multi-head Latent Attention (DeepSeek-V2/V3)
    Tensor("self_attn.q_proj.weight", "attn.w_q", "heads_in", ("N*Q", "D"), "mla_q"),
    Tensor("self_attn.q_a_proj.weight", "attn.w_q_a", "linear", ("A", "D"), "mla_q_lora"),
    Tensor("self_attn.q_a_layernorm.weight", "attn.q_a_norm.weight", "same", ("A",),
           "mla_q_lora"),
    Tensor("self_attn.q_b_proj.weight", "attn.w_q_b", "heads_in", ("N*Q", "A"), "mla_q_lora"),
    Tensor("self_attn.kv_a_proj_with_mqa.weight", "attn.w_kv_a", "linear", ("W", "D"), "mla"),
    Tensor("self_attn.kv_a_layernorm.weight", "attn.kv_a_norm.weight", "same", ("C",), "mla"),
    Tensor("self_attn.kv_b_proj.weight", "attn.w_kv_b", "heads_in", ("N*B", "C"), "mla"),
    Tensor("self_attn.o_proj.weight", "attn.w_o", "heads_out", ("D", "N*U"), "mla"),
    Tensor("post_attention_layernorm.weight", "ffn.norm.weight", "same", ("D",)),
    Tensor("mlp.gate_proj.weight", "ffn.ffn.w_gate", "linear", ("F", "D"), "dense"),
    Tensor("mlp.up_proj.weight", "ffn.ffn.w_up", "linear", ("F", "D"), "dense"),
    Tensor("mlp.down_proj.weight", "ffn.ffn.w_down", "linear", ("D", "F"), "dense"),
    Tensor("{moe}.gate.weight", "{routed}.router.kernel", "linear", ("E", "D"), "moe"),
    Tensor("{moe}.gate.e_score_correction_bias", "{routed}.router.bias", "same", ("E",),
           "router_bias"),
    Tensor("{moe}.experts.{e}.{gate}.weight", "{routed}.experts.w_gate", "linear", ("M", "D"),
           "moe"),
    Tensor("{moe}.experts.{e}.{up}.weight", "{routed}.experts.w_up", "linear", ("M", "D"),
           "moe"),
    Tensor("{moe}.experts.{e}.{down}.weight", "{routed}.experts.w_down", "linear", ("D", "M"),
           "moe"),
    # shared experts, stored as one SwiGLU of their summed width S (DeepSeek, Qwen2-MoE)
    Tensor("{moe}.{shared}.gate_proj.weight", "ffn.block.shared.ffn.w_gate", "linear",
           ("S", "D"), "shared"),
    Tensor("{moe}.{shared}.up_proj.weight", "ffn.block.shared.ffn.w_up", "linear", ("S", "D"),
           "shared"),
    Tensor("{moe}.{shared}.down_proj.weight", "ffn.block.shared.ffn.w_down", "linear",
           ("D", "S"), "shared"),
    Tensor("{moe}.{shared_gate}.weight", "ffn.block.shared.mix_kernel", "linear", ("1", "D"),
           "shared_gate"),
)


def _is_moe(spec, i: int) -> bool:
    return spec.is_moe_layer(i)


# which layers (spec, layer index) hold a row
WHEN = MappingProxyType({
    "always": lambda spec, i: True,
    "gqa": lambda spec, i: spec.mla is None,
    "qkv_bias": lambda spec, i: spec.qkv_bias,
    "qk_norm_head": lambda spec, i: spec.qk_norm and spec.qk_norm_axes == "head",
    "qk_norm_all": lambda spec, i: spec.qk_norm and spec.qk_norm_axes == "all",
    "mla": lambda spec, i: spec.mla is not None,
    "mla_q": lambda spec, i: spec.mla is not None and spec.mla.q_lora_rank is None,
    "mla_q_lora": lambda spec, i: spec.mla is not None and spec.mla.q_lora_rank is not None,
    "dense": lambda spec, i: not _is_moe(spec, i),
    "moe": _is_moe,
    "router_bias": lambda spec, i: _is_moe(spec, i) and spec.moe.router.use_bias,
    "shared": lambda spec, i: _is_moe(spec, i) and spec.moe.num_shared_experts > 0,
    "shared_gate": lambda spec, i: _is_moe(spec, i) and spec.moe.shared_mix == "sigmoid",
})
# the routed experts' module path of each block kind (`{routed}` in the table)
ROUTED = MappingProxyType({"topk": "ffn.block", "deepseek": "ffn.block.routed"})
# layout -> (torch array, head width -> ours; ours, head width -> torch array); the head width
# is the size of the last symbol of the row's "X*h" axis
LAYOUTS = MappingProxyType({
    "same": (lambda t, h: t, lambda o, h: o),
    "linear": (lambda t, h: t.T, lambda o, h: o.T),
    # [count*h, in] -> [in, count, h]
    "heads_in": (lambda t, h: t.T.reshape(t.shape[1], -1, h),
                 lambda o, h: o.reshape(o.shape[0], -1).T),
    # [out, count*h] -> [count, h, out]
    "heads_out": (lambda t, h: t.T.reshape(-1, h, t.shape[0]),
                  lambda o, h: o.reshape(-1, o.shape[-1]).T),
    # [count*h] -> [count, h]
    "heads_bias": (lambda t, h: t.reshape(-1, h), lambda o, h: o.reshape(-1)),
})


# the stored dtypes a tensor may have; dtype=None keeps KEPT_DTYPES, the others become float32


def dims(spec: DecoderSpec) -> dict[str, int]:
    """The tables' dimension symbols for `spec` (MLA's where `model.mla` is set: Q the query /
    key head, A the query rank, C the latent, W latent + RoPE key, B key + value head, U the
    value head; S the shared experts' summed width)."""
    sizes = {"V": spec.vocab_size, "D": spec.d_model, "N": spec.num_heads,
             "K": spec.num_kv_heads, "H": spec.resolved_head_dim, "F": spec.d_ff,
             "E": spec.moe.num_experts, "M": spec.moe.d_hidden, "S": spec.moe.shared_width,
             "1": 1}
    mla = spec.mla
    if mla is not None:
        sizes.update(Q=mla.qk_head_dim, A=mla.q_lora_rank or 0, C=mla.kv_lora_rank,
                     W=mla.kv_lora_rank + mla.qk_rope_head_dim,
                     B=mla.qk_nope_head_dim + mla.v_head_dim, U=mla.v_head_dim)
    return sizes


def head_width(row: Tensor, sizes: Mapping[str, int]) -> int:
    """The head width of a row's "count*h" axis (1 when it has none)."""
    split = next((axis for axis in row.shape if "*" in axis), None)
    return sizes[split.split("*")[-1]] if split else 1


def torch_shape(row: Tensor, sizes: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(math.prod(sizes[s] for s in axis.split("*")) for axis in row.shape)


def hf_names(row: Tensor, family: HFFamily, num_experts: int, prefix: str = "") -> Iterator[str]:
    """The HF names of one row: one, or one per routed expert (made one at a time)."""
    gate, up, down = family.experts
    name = prefix + row.hf.format(moe=family.moe, gate=gate, up=up, down=down, e="{e}",
                                  shared=family.shared, shared_gate=family.shared_gate)
    if "{e}" not in row.hf:
        yield name
        return
    for e in range(num_experts):
        yield name.format(e=e)


def layer_rows(spec: DecoderSpec, i: int) -> list[Tensor]:
    return [row for row in LAYER_TENSORS if WHEN[row.when](spec, i)]


def all_rows(spec: DecoderSpec):
    """(HF name prefix, row) of every tensor of `spec`, top-level rows first."""
    yield from (("", row) for row in TOP_TENSORS)
    for i in range(spec.num_layers):
        yield from ((f"model.layers.{i}.", row) for row in layer_rows(spec, i))




def ours_path(row: Tensor, spec: DecoderSpec) -> str:
    """The row's moejax parameter path for `spec` (`{routed}` filled in)."""
    return row.ours.format(routed=ROUTED.get(spec.block, ""))
