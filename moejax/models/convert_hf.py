"""Checkpoint conversion: Hugging Face weights <-> moejax `Decoder` params, by one tensor table.

moejax's top-k decoder (docs/methods.md section 3: RMSNorm, RoPE "rotate half", grouped-query
attention, no biases, untied embeddings, softmax-then-top-k) is weight for weight HF
`MixtralForCausalLM`, and with `model.qk_norm` (per-head q/k RMSNorm) HF
`Qwen3MoeForCausalLM`; the family records (`hf_families.py`) say which options each fixes.
torch `Linear` weights are [out, in]; moejax stores [in, out] with heads split out. The
tables below (`TOP_TENSORS`, `LAYER_TENSORS`) drive the expected names and shapes, the import
(`from_hf`) and the export (`to_hf`) alike; in the hub's per-expert layout, as
`save_pretrained` writes it:

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
| ...{moe}.experts.{e}.{gate} [M, D]                     | ...block.experts.w_gate[e] [D, M]   |
| ...{moe}.experts.{e}.{up} [M, D]                       | ...block.experts.w_up[e] [D, M]     |
| ...{moe}.experts.{e}.{down} [D, M]                     | ...block.experts.w_down[e] [M, D]   |
| model.layers.{i}.mlp.{gate,up,down}_proj.weight        | layers[i].ffn.ffn.w_{gate,up,down}  |
| model.norm.weight [D]                                  | final_norm.weight [D]               |
| lm_head.weight [V, D]                                  | head.kernel [D, V]                  |

{moe}, {gate}, {up}, {down}: the family's names (Mixtral `block_sparse_moe`, `w1`, `w3`, `w2`;
Qwen3-MoE `mlp`, `gate_proj`, `up_proj`, `down_proj`). HF's q/k/v rows are head-major (row
`n * H + h`), so `w_q = q_proj.T.reshape(D, N, H)`. Any tensor that does not map (an unknown
name, an expert index >= E, a rotary `inv_freq` buffer) or that is missing raises ValueError
listing the names: expert weights are never dropped silently. The tables give the unrolled
layout (`model.scan_layers=False`); a scanned model's stacks are filled layer by layer
(`layout.stack_params`).

Untrusted input: before anything is sized by the spec, `from_hf` compares its layer and expert
counts with the indices in the tensor names, then the expected names and shapes with the
tensors lazily (never a list as long as the config says), and it refuses each tensor that is
not float16 / bfloat16 / float32 / float64 or holds a NaN or an infinity, naming it, as it
converts it (one tensor at a time).

Streaming: `from_hf` reads each tensor when it converts it (`np.asarray` on a lazily read
tensor, see `hf_dir.read_hf_dir`) and writes it into its place in the output, so the host holds
the converted parameters once, in the tensors' own dtype when asked (`dtype=None`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Mapping
from types import MappingProxyType

import jax
import numpy as np
from flax import nnx

from moejax.models.decoder import Decoder, DecoderSpec
from moejax.models.hf_families import COMMON_KEYS, HFFamily, family_of, set_dotted
from moejax.models.layout import abstract_params, stack_params, unstack_params


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
    Tensor("self_attn.q_proj.weight", "attn.w_q", "heads_in", ("N*H", "D")),
    Tensor("self_attn.k_proj.weight", "attn.w_k", "heads_in", ("K*H", "D")),
    Tensor("self_attn.v_proj.weight", "attn.w_v", "heads_in", ("K*H", "D")),
    Tensor("self_attn.o_proj.weight", "attn.w_o", "heads_out", ("D", "N*H")),
    Tensor("self_attn.q_norm.weight", "attn.q_norm.weight", "same", ("H",), "qk_norm"),
    Tensor("self_attn.k_norm.weight", "attn.k_norm.weight", "same", ("H",), "qk_norm"),
    Tensor("post_attention_layernorm.weight", "ffn.norm.weight", "same", ("D",)),
    Tensor("mlp.gate_proj.weight", "ffn.ffn.w_gate", "linear", ("F", "D"), "dense"),
    Tensor("mlp.up_proj.weight", "ffn.ffn.w_up", "linear", ("F", "D"), "dense"),
    Tensor("mlp.down_proj.weight", "ffn.ffn.w_down", "linear", ("D", "F"), "dense"),
    Tensor("{moe}.gate.weight", "ffn.block.router.kernel", "linear", ("E", "D"), "moe"),
    Tensor("{moe}.experts.{e}.{gate}.weight", "ffn.block.experts.w_gate", "linear", ("M", "D"),
           "moe"),
    Tensor("{moe}.experts.{e}.{up}.weight", "ffn.block.experts.w_up", "linear", ("M", "D"),
           "moe"),
    Tensor("{moe}.experts.{e}.{down}.weight", "ffn.block.experts.w_down", "linear", ("D", "M"),
           "moe"),
)
# which layers (spec, layer index) hold a row
WHEN = MappingProxyType({
    "always": lambda spec, i: True,
    "qk_norm": lambda spec, i: spec.qk_norm,
    "dense": lambda spec, i: not spec.is_moe_layer(i),
    "moe": lambda spec, i: spec.is_moe_layer(i),
})
# layout -> (torch array, dims -> ours; ours, dims -> torch array)
LAYOUTS = MappingProxyType({
    "same": (lambda t, d: t, lambda o, d: o),
    "linear": (lambda t, d: t.T, lambda o, d: o.T),
    "heads_in": (lambda t, d: t.T.reshape(d["D"], -1, d["H"]),  # [count*H, D] -> [D, count, H]
                 lambda o, d: o.reshape(d["D"], -1).T),
    "heads_out": (lambda t, d: t.T.reshape(-1, d["H"], d["D"]),  # [D, N*H] -> [N, H, D]
                  lambda o, d: o.reshape(-1, d["D"]).T),
})


# the stored dtypes a tensor may have; dtype=None keeps KEPT_DTYPES, the others become float32
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
KEPT_DTYPES = ("bfloat16", "float32")
_SHOWN = 20  # missing tensor names listed in an error
_LAYER = re.compile(r"model\.layers\.(\d{1,9})\.")


def dims(spec: DecoderSpec) -> dict[str, int]:
    """The tables' dimension symbols for `spec`."""
    return {"V": spec.vocab_size, "D": spec.d_model, "N": spec.num_heads,
            "K": spec.num_kv_heads, "H": spec.resolved_head_dim, "F": spec.d_ff,
            "E": spec.moe.num_experts, "M": spec.moe.d_hidden}


def _shape(row: Tensor, sizes: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(math.prod(sizes[s] for s in axis.split("*")) for axis in row.shape)


def _names(row: Tensor, family: HFFamily, num_experts: int, prefix: str = "") -> Iterator[str]:
    """The HF names of one row: one, or one per routed expert (made one at a time)."""
    gate, up, down = family.experts
    name = prefix + row.hf.format(moe=family.moe, gate=gate, up=up, down=down, e="{e}")
    if "{e}" not in row.hf:
        yield name
        return
    for e in range(num_experts):
        yield name.format(e=e)


def _layer_rows(spec: DecoderSpec, i: int) -> list[Tensor]:
    return [row for row in LAYER_TENSORS if WHEN[row.when](spec, i)]


def _rows(spec: DecoderSpec):
    """(HF name prefix, row) of every tensor of `spec`, top-level rows first."""
    yield from (("", row) for row in TOP_TENSORS)
    for i in range(spec.num_layers):
        yield from ((f"model.layers.{i}.", row) for row in _layer_rows(spec, i))


def _expected(spec: DecoderSpec) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(HF tensor name, torch shape) of every tensor of `spec`, made one at a time."""
    family, sizes = family_of(spec), dims(spec)
    for prefix, row in _rows(spec):
        shape = _shape(row, sizes)
        for name in _names(row, family, spec.moe.num_experts, prefix):
            yield name, shape


def expected_shapes(spec: DecoderSpec) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> torch shape for this spec (its family: `model.hf_family`)."""
    return dict(_expected(spec))


def _check_counts(tensors: Mapping, spec: DecoderSpec) -> None:
    """The spec may not have more layers or routed experts than the tensor names hold
    (experts checked where names have any), checked before anything is sized by them; fewer
    are named as unexpected tensors by `_check_names_and_shapes`."""
    family = family_of(spec)
    expert = re.compile(rf"model\.layers\.\d{{1,9}}\.{re.escape(family.moe)}\.experts\."
                        r"(\d{1,9})\.")
    keys = {key.ours: key for key in (*COMMON_KEYS, *family.keys)}
    for option, count, pattern, what in (("num_layers", spec.num_layers, _LAYER, "layers"),
                                         ("moe.num_experts", spec.moe.num_experts, expert,
                                          "experts")):
        found = {int(match[1]) for match in map(pattern.match, tensors) if match}
        if (found or what == "layers") and count > len(found):
            held = f" (indices {min(found)} to {max(found)})" if found else ""
            raise ValueError(
                f"{family.title} config {'/'.join(keys[option].hf)}={count} (model.{option}) "
                f"but the tensors hold {len(found)} {what}{held}")


def _check_names_and_shapes(tensors: Mapping, spec: DecoderSpec) -> None:
    """Every expected tensor present with its shape and no other, compared lazily: at most
    len(tensors) + `_SHOWN` + 1 expected names are made, whatever the spec says."""
    _check_counts(tensors, spec)
    title = family_of(spec).title
    matched, missing, wrong = set(), [], []
    for name, shape in _expected(spec):
        if name not in tensors:
            missing.append(name)
            if len(missing) > _SHOWN:
                break
            continue
        matched.add(name)
        if tuple(np.shape(tensors[name])) != shape:
            wrong.append(f"{name}: {tuple(np.shape(tensors[name]))} != {shape}")
    if missing or len(matched) < len(tensors):
        listed = (f"unexpected {sorted(set(tensors) - matched)}, missing {sorted(missing)}"
                  if len(missing) <= _SHOWN else f"missing {missing[:_SHOWN]} and more")
        raise ValueError(
            f"{title} state dict does not match the spec (E={spec.moe.routed_experts}, "
            f"layers={spec.num_layers}): {listed}"
        )
    if wrong:
        raise ValueError(f"{title} tensors with the wrong shape: {wrong}")


def _read(tensors: Mapping, name: str, dtype) -> np.ndarray:
    """One tensor as a NumPy array of `dtype` (None: its own, float16 and float64 as
    float32), after checking that it is a float and, converted, finite.

    Raises:
      ValueError: another dtype (int8, bool, ...) or a NaN / infinity, naming the tensor.
    """
    value = np.asarray(tensors[name])
    if value.dtype.name not in FLOAT_DTYPES:
        raise ValueError(f"HF tensor {name} has dtype {value.dtype.name}; allowed: "
                         f"{', '.join(FLOAT_DTYPES)}")
    if dtype is None:
        dtype = value.dtype if value.dtype.name in KEPT_DTYPES else np.float32
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below
        value = value.astype(dtype, copy=False)
    finite = np.isfinite(value)
    if not finite.all():
        raise ValueError(f"HF tensor {name} holds {finite.size - np.count_nonzero(finite)} "
                         f"non-finite values (NaN or infinity) as {np.dtype(dtype).name}")
    return value


def _convert_rows(spec: DecoderSpec, rows, get, prefix: str) -> dict:
    """The nested moejax params of `rows`; get(HF name) -> NumPy array in torch layout."""
    family, sizes = family_of(spec), dims(spec)
    out = {}
    for row in rows:
        to_ours, _ = LAYOUTS[row.layout]
        arrays = [to_ours(get(name), sizes)
                  for name in _names(row, family, spec.moe.num_experts, prefix)]
        set_dotted(out, row.ours, np.stack(arrays) if "{e}" in row.hf else arrays[0])
    return out


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
      spec: the decoder's options, in the family of the tensors (`model.hf_family`).
      dtype: the parameters' dtype (float32: what `Decoder` holds); None keeps each tensor's
        own bfloat16 or float32 (a bfloat16 checkpoint stays bfloat16, e.g. in `moejax-hf
        import`'s export) and makes float16 and float64 float32.

    Returns:
      The structure of `nnx.to_pure_dict(nnx.state(Decoder(spec), nnx.Param))`, in the layout
      of `spec.scan_layers`: load it with `weights.load_params(model, params)`.

    Raises:
      ValueError: an option the family cannot express; layer or expert counts that are not
        the tensors'; unexpected / missing / wrongly shaped tensors; a tensor not of a float
        dtype or not finite (each named).
    """
    _check_names_and_shapes(tensors, spec)

    def get(name):
        return _read(tensors, name, dtype)

    def layer(i):
        return _convert_rows(spec, _layer_rows(spec, i), get, f"model.layers.{i}.")

    params = {**_convert_rows(spec, TOP_TENSORS, get, ""),
              "layers": _Layers(layer, spec.num_layers)}
    if not spec.scan_layers:
        params["layers"] = dict(params["layers"])
    params = stack_params(spec, params)
    expected = jax.tree.map(lambda a: a.shape, abstract_params(spec, nnx.Param))
    assert jax.tree.map(np.shape, params) == expected, "internal: not the Decoder's params"
    return params


def _export_rows(spec: DecoderSpec, rows, params: dict, prefix: str) -> dict[str, np.ndarray]:
    """HF name -> torch-layout array of `rows`, read from the nested moejax `params`."""
    family, sizes = family_of(spec), dims(spec)
    out = {}
    for row in rows:
        _, to_torch = LAYOUTS[row.layout]
        value = params
        for part in row.ours.split("."):
            value = value[part]
        names = _names(row, family, spec.moe.num_experts, prefix)
        values = list(value) if "{e}" in row.hf else [value]
        out.update({name: to_torch(v, sizes) for name, v in zip(names, values, strict=True)})
    return out


def to_hf(model: Decoder) -> dict[str, np.ndarray]:
    """A `Decoder` -> HF tensor name -> contiguous float32 array (torch layout, the hub's
    per-expert names of the family `model.spec.hf_family`).

    Raises:
      ValueError: an option of the model's spec that its family cannot express, named.
    """
    spec = model.spec
    family_of(spec)
    pure = jax.tree.map(lambda a: np.asarray(a, np.float32),
                        unstack_params(spec, nnx.to_pure_dict(nnx.split(model, nnx.Param)[1])))
    out = _export_rows(spec, TOP_TENSORS, pure, "")
    for i in range(spec.num_layers):
        out.update(_export_rows(spec, _layer_rows(spec, i), pure["layers"][i],
                                f"model.layers.{i}."))
    return {name: np.ascontiguousarray(value) for name, value in out.items()}
