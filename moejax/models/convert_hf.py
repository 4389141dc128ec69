"""Checkpoint conversion: Hugging Face Mixtral / Qwen3-MoE weights <-> moejax `Decoder` params.

moejax's top-k decoder (docs/methods.md section 3: RMSNorm, RoPE "rotate half", grouped-query
attention, no biases, untied embeddings, softmax-then-top-k) is weight for weight HF
`MixtralForCausalLM`, and with `model.qk_norm` (per-head q/k RMSNorm) HF
`Qwen3MoeForCausalLM`, whose dense layers (`mlp_only_layers`, `decoder_sparse_step`) are
moejax's `first_dense_layers` / `moe_every` and whose `norm_topk_prob` is
`router.normalize_gates`. torch `Linear` weights are [out, in]; moejax stores [in, out] with
heads split out (names in the hub's per-expert layout, as `save_pretrained` writes them):

| HF tensor (torch layout)                               | moejax parameter                    |
|--------------------------------------------------------|-------------------------------------|
| model.embed_tokens.weight [V, D]                       | embed.embedding [V, D]              |
| model.layers.{i}.input_layernorm.weight [D]            | layers[i].attn_norm.weight [D]      |
| model.layers.{i}.self_attn.q_proj.weight [N*H, D]      | layers[i].attn.w_q [D, N, H]        |
| model.layers.{i}.self_attn.{k,v}_proj.weight [K*H, D]  | layers[i].attn.w_{k,v} [D, K, H]    |
| model.layers.{i}.self_attn.o_proj.weight [D, N*H]      | layers[i].attn.w_o [N, H, D]        |
| model.layers.{i}.self_attn.{q,k}_norm.weight [H]       | layers[i].attn.{q,k}_norm.weight    |
| model.layers.{i}.post_attention_layernorm.weight [D]   | layers[i].ffn.norm.weight [D]       |
| model.layers.{i}.{moe}.gate.weight [E, D]              | layers[i].ffn.block.router.kernel   |
| ...{moe}.experts.{e}.{gate} [F, D]                     | ...block.experts.w_gate[e] [D, F]   |
| ...{moe}.experts.{e}.{up} [F, D]                       | ...block.experts.w_up[e] [D, F]     |
| ...{moe}.experts.{e}.{down} [D, F]                     | ...block.experts.w_down[e] [F, D]   |
| model.layers.{i}.mlp.{gate,up,down}_proj.weight        | layers[i].ffn.ffn.w_{gate,up,down}  |
| model.norm.weight [D]                                  | final_norm.weight [D]               |
| lm_head.weight [V, D]                                  | head.kernel [D, V]                  |

{moe}, {gate}, {up}, {down}: Mixtral `block_sparse_moe`, `w1`, `w3`, `w2`; Qwen3-MoE `mlp`,
`gate_proj`, `up_proj`, `down_proj` (`FAMILIES`). q/k norms: Qwen3 only; dense `mlp` layers:
Qwen3 only. HF's q/k/v rows are head-major (row `n * H + h`), so `w_q = q_proj.T.reshape(D, N,
H)`. Any tensor that does not map (an unknown name, an expert index >= E, a rotary `inv_freq`
buffer) or that is missing raises ValueError listing the names: expert weights are never
dropped silently. The table gives the unrolled layout (`model.scan_layers=False`); a scanned
model's stacks are filled layer by layer (`stack_params`).

Streaming: `from_hf` reads each tensor when it converts it (`np.asarray` on a lazily read
tensor, see `hf_dir.read_hf_dir`) and writes it into its place in the output, so the host holds
the converted parameters once, in the tensors' own dtype when asked (`dtype=None`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx

from moejax.models.decoder import Decoder, DecoderSpec, stack_params, unstack_params


@dataclasses.dataclass(frozen=True)
class HFFamily:
    """How an HF model family names its config and MoE tensors."""

    model_type: str  # config.json "model_type"
    architecture: str  # config.json "architectures"[0]
    title: str  # in messages
    moe: str  # an MoE layer's module
    experts: tuple[str, str, str]  # an expert's gate, up and down projections


FAMILIES = {
    "mixtral": HFFamily("mixtral", "MixtralForCausalLM", "HF Mixtral", "block_sparse_moe",
                        ("w1", "w3", "w2")),
    "qwen3_moe": HFFamily("qwen3_moe", "Qwen3MoeForCausalLM", "HF Qwen3-MoE", "mlp",
                          ("gate_proj", "up_proj", "down_proj")),
}


def hf_family(spec: DecoderSpec) -> HFFamily:
    """The HF family of `spec`: Qwen3-MoE with `qk_norm`, else Mixtral.

    Raises:
      ValueError: naming the first option that family cannot express.
    """
    family = FAMILIES["qwen3_moe" if spec.qk_norm else "mixtral"]
    router = spec.moe.router
    required = [
        ("model.block", spec.block, "topk"),
        ("model.moe.granularity", spec.moe.granularity, 1),
        ("model.moe.num_shared_experts", spec.moe.num_shared_experts, 0),
        ("model.moe.router.kind", router.kind, "softmax_topk"),
        ("model.moe.router.scaling_factor", router.scaling_factor, 1.0),
        ("model.moe.router.num_groups", router.num_groups, 1),
        ("model.moe.router.use_bias", router.use_bias, False),
    ]
    if family.model_type == "mixtral":  # every layer MoE, gates renormalised
        required += [("model.first_dense_layers", spec.first_dense_layers, 0),
                     ("model.moe_every", spec.moe_every, 1),
                     ("model.moe.router.normalize_gates", router.normalize_gates, True)]
    for name, value, allowed in required:
        if value != allowed:
            raise ValueError(f"{name}={value!r} has no {family.title} equivalent (needs "
                             f"{allowed!r})")
    return family


def _layer_shapes(spec: DecoderSpec, family: HFFamily, i: int) -> dict[str, tuple[int, ...]]:
    """Layer i's HF tensor names (after `model.layers.{i}.`) -> torch shapes."""
    d, h, n, k = spec.d_model, spec.resolved_head_dim, spec.num_heads, spec.num_kv_heads
    shapes = {"input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
              "self_attn.q_proj.weight": (n * h, d), "self_attn.k_proj.weight": (k * h, d),
              "self_attn.v_proj.weight": (k * h, d), "self_attn.o_proj.weight": (d, n * h)}
    if spec.qk_norm:
        shapes.update({"self_attn.q_norm.weight": (h,), "self_attn.k_norm.weight": (h,)})
    if not spec.is_moe_layer(i):
        f = spec.d_ff
        return {**shapes, "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d),
                "mlp.down_proj.weight": (d, f)}
    e, f = spec.moe.num_experts, spec.moe.d_hidden
    gate, up, down = family.experts
    shapes[f"{family.moe}.gate.weight"] = (e, d)
    for j in range(e):
        q = f"{family.moe}.experts.{j}."
        shapes.update({q + gate + ".weight": (f, d), q + up + ".weight": (f, d),
                       q + down + ".weight": (d, f)})
    return shapes


def expected_shapes(spec: DecoderSpec) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> torch shape for this spec (its family: `hf_family`)."""
    family = hf_family(spec)
    d, v = spec.d_model, spec.vocab_size
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,),
              "lm_head.weight": (v, d)}
    for i in range(spec.num_layers):
        shapes.update({f"model.layers.{i}.{name}": shape
                       for name, shape in _layer_shapes(spec, family, i).items()})
    return shapes


def _check_names_and_shapes(tensors: Mapping, spec: DecoderSpec) -> None:
    expected = expected_shapes(spec)
    title = hf_family(spec).title
    unexpected = sorted(set(tensors) - set(expected))
    missing = sorted(set(expected) - set(tensors))
    if unexpected or missing:
        raise ValueError(
            f"{title} state dict does not match the spec (E={spec.moe.routed_experts}, "
            f"layers={spec.num_layers}): unexpected {unexpected}, missing {missing}"
        )
    wrong = [f"{name}: {tuple(np.shape(tensors[name]))} != {shape}"
             for name, shape in expected.items() if tuple(np.shape(tensors[name])) != shape]
    if wrong:
        raise ValueError(f"{title} tensors with the wrong shape: {wrong}")


def _layer_from_hf(get, i: int, spec: DecoderSpec, family: HFFamily) -> dict:
    """Layer i's nested moejax params; get(name after `model.layers.{i}.`) -> array."""
    d, h = spec.d_model, spec.resolved_head_dim

    def heads(name, count):  # [count*H, D] -> [D, count, H]
        return get(name).T.reshape(d, count, h)

    attn = {"w_q": heads("self_attn.q_proj.weight", spec.num_heads),
            "w_k": heads("self_attn.k_proj.weight", spec.num_kv_heads),
            "w_v": heads("self_attn.v_proj.weight", spec.num_kv_heads),
            "w_o": get("self_attn.o_proj.weight").T.reshape(spec.num_heads, h, d)}
    if spec.qk_norm:
        attn["q_norm"] = {"weight": get("self_attn.q_norm.weight")}
        attn["k_norm"] = {"weight": get("self_attn.k_norm.weight")}
    ffn = {"norm": {"weight": get("post_attention_layernorm.weight")}}
    if not spec.is_moe_layer(i):
        ffn["ffn"] = {f"w_{kind}": get(f"mlp.{kind}_proj.weight").T
                      for kind in ("gate", "up", "down")}
    else:
        names = dict(zip(("w_gate", "w_up", "w_down"), family.experts, strict=True))
        ffn["block"] = {
            "router": {"kernel": get(f"{family.moe}.gate.weight").T},
            "experts": {ours: np.stack([get(f"{family.moe}.experts.{e}.{theirs}.weight").T
                                        for e in range(spec.moe.num_experts)])
                        for ours, theirs in names.items()},
        }
    return {"attn_norm": {"weight": get("input_layernorm.weight")}, "attn": attn, "ffn": ffn}


class _Layers(Mapping):
    """Layer index -> converted layer, computed on access (`stack_params` takes each once)."""

    def __init__(self, convert, num_layers: int):
        self._convert, self._num_layers = convert, num_layers

    def __getitem__(self, i):
        if not 0 <= i < self._num_layers:
            raise KeyError(i)
        return self._convert(i)

    def __iter__(self):
        return iter(range(self._num_layers))

    def __len__(self):
        return self._num_layers


def from_hf(tensors: Mapping, spec: DecoderSpec, *, dtype=np.float32) -> dict:
    """HF tensors -> the parameters of `Decoder(spec)` as a pure dict of NumPy arrays.

    Args:
      tensors: HF tensor name (per-expert layout, `hf_dir.per_expert_layout`) -> array in
        torch layout, or anything `np.asarray` reads (a lazily read safetensors tensor); torch
        tensors must be converted to NumPy first.
      spec: the decoder's options, in the family of the tensors (`hf_family`).
      dtype: the parameters' dtype (float32: what `Decoder` holds); None keeps each tensor's
        own (a bfloat16 checkpoint stays bfloat16, e.g. in `moejax-hf import`'s export).

    Returns:
      The structure of `nnx.to_pure_dict(nnx.state(Decoder(spec), nnx.Param))`, in the layout
      of `spec.scan_layers`: load it with `load_params(model, params)`.

    Raises:
      ValueError: an option the family cannot express, or unexpected / missing / wrongly
        shaped tensors.
    """
    family = hf_family(spec)
    _check_names_and_shapes(tensors, spec)

    def get(name):
        return np.asarray(tensors[name], dtype)

    def layer(i):
        return _layer_from_hf(lambda name: get(f"model.layers.{i}.{name}"), i, spec, family)

    params = {"embed": {"embedding": get("model.embed_tokens.weight")},
              "layers": _Layers(layer, spec.num_layers),
              "final_norm": {"weight": get("model.norm.weight")},
              "head": {"kernel": get("lm_head.weight").T}}
    if not spec.scan_layers:
        params["layers"] = dict(params["layers"])
    params = stack_params(spec, params)
    abstract = nnx.eval_shape(lambda: Decoder(spec, rngs=nnx.Rngs(0)))
    expected = jax.tree.map(lambda a: a.shape, nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
    assert jax.tree.map(np.shape, params) == expected, "internal: not the Decoder's params"
    return params


def _layer_to_hf(layer: Mapping, i: int, spec: DecoderSpec,
                 family: HFFamily) -> dict[str, np.ndarray]:
    p = f"model.layers.{i}."
    d = spec.d_model
    attn, ffn = layer["attn"], layer["ffn"]
    out = {
        p + "input_layernorm.weight": layer["attn_norm"]["weight"],
        p + "self_attn.q_proj.weight": attn["w_q"].reshape(d, -1).T,
        p + "self_attn.k_proj.weight": attn["w_k"].reshape(d, -1).T,
        p + "self_attn.v_proj.weight": attn["w_v"].reshape(d, -1).T,
        p + "self_attn.o_proj.weight": attn["w_o"].reshape(-1, d).T,
        p + "post_attention_layernorm.weight": ffn["norm"]["weight"],
    }
    if spec.qk_norm:
        out[p + "self_attn.q_norm.weight"] = attn["q_norm"]["weight"]
        out[p + "self_attn.k_norm.weight"] = attn["k_norm"]["weight"]
    if not spec.is_moe_layer(i):
        out.update({f"{p}mlp.{kind}_proj.weight": ffn["ffn"][f"w_{kind}"].T
                    for kind in ("gate", "up", "down")})
        return out
    block = ffn["block"]
    out[f"{p}{family.moe}.gate.weight"] = block["router"]["kernel"].T
    for ours, theirs in zip(("w_gate", "w_up", "w_down"), family.experts, strict=True):
        for e in range(spec.moe.num_experts):
            out[f"{p}{family.moe}.experts.{e}.{theirs}.weight"] = block["experts"][ours][e].T
    return out


def to_hf(model: Decoder) -> dict[str, np.ndarray]:
    """A `Decoder` -> HF tensor name -> contiguous float32 array (torch layout, the hub's
    per-expert names of its family: `hf_family(model.spec)`).

    Raises:
      ValueError: an option of the model's spec that neither family can express, named.
    """
    spec = model.spec
    family = hf_family(spec)
    pure = jax.tree.map(lambda a: np.asarray(a, np.float32),
                        unstack_params(spec, nnx.to_pure_dict(nnx.split(model, nnx.Param)[1])))
    out = {"model.embed_tokens.weight": pure["embed"]["embedding"]}
    for i in range(spec.num_layers):
        out.update(_layer_to_hf(pure["layers"][i], i, spec, family))
    out["model.norm.weight"] = pure["final_norm"]["weight"]
    out["lm_head.weight"] = pure["head"]["kernel"].T
    return {name: np.ascontiguousarray(value) for name, value in out.items()}
