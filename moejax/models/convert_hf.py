"""Checkpoint conversion: Hugging Face weights <-> moejax `Decoder` params, by one tensor table.

moejax's decoder (docs/methods.md) is weight for weight each family of `hf_families.FAMILIES`
(Mixtral, Qwen3-MoE, OLMoE, Qwen2-MoE, DeepSeek-V2/V3); the family records say which options
each fixes, and the tensor table (`hf_tensors.py`) which HF tensor is which parameter. Any
tensor that does not map (an unknown name, an expert index >= E, a rotary `inv_freq` buffer) or
that is missing raises ValueError listing the names: expert weights are never dropped silently.

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

import re
from collections.abc import Iterator, Mapping

import jax
import numpy as np
from flax import nnx

from moejax.models.decoder import Decoder, DecoderSpec
from moejax.models.hf_families import COMMON_KEYS, family_of, set_dotted
from moejax.models.hf_tensors import (
    LAYOUTS,
    TOP_TENSORS,
    all_rows,
    dims,
    head_width,
    hf_names,
    layer_rows,
    ours_path,
    torch_shape,
)
from moejax.models.layout import EXPORTED, abstract_params, stack_params, unstack_params

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
KEPT_DTYPES = ("bfloat16", "float32")
_SHOWN = 20  # missing tensor names listed in an error
_LAYER = re.compile(r"model\.layers\.(\d{1,9})\.")


def _expected(spec: DecoderSpec) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(HF tensor name, torch shape) of every tensor of `spec`, made one at a time."""
    family, sizes = family_of(spec), dims(spec)
    for prefix, row in all_rows(spec):
        shape = torch_shape(row, sizes)
        for name in hf_names(row, family, spec.moe.num_experts, prefix):
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
        arrays = [to_ours(get(name), head_width(row, sizes))
                  for name in hf_names(row, family, spec.moe.num_experts, prefix)]
        set_dotted(out, ours_path(row, spec),
                   np.stack(arrays) if "{e}" in row.hf else arrays[0])
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
        return _convert_rows(spec, layer_rows(spec, i), get, f"model.layers.{i}.")

    params = {**_convert_rows(spec, TOP_TENSORS, get, ""),
              "layers": _Layers(layer, spec.num_layers)}
    if not spec.scan_layers:
        params["layers"] = dict(params["layers"])
    params = stack_params(spec, params)
    expected = jax.tree.map(lambda a: a.shape, abstract_params(spec))
    assert jax.tree.map(np.shape, params) == expected, "internal: not the Decoder's params"
    return params


def _export_rows(spec: DecoderSpec, rows, params: dict, prefix: str) -> dict[str, np.ndarray]:
    """HF name -> torch-layout array of `rows`, read from the nested moejax `params`."""
    family, sizes = family_of(spec), dims(spec)
    out = {}
    for row in rows:
        _, to_torch = LAYOUTS[row.layout]
        value = params
        for part in ours_path(row, spec).split("."):
            value = value[part]
        names = hf_names(row, family, spec.moe.num_experts, prefix)
        values = list(value) if "{e}" in row.hf else [value]
        head = head_width(row, sizes)
        out.update({name: to_torch(v, head) for name, v in zip(names, values, strict=True)})
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
                        unstack_params(spec, nnx.to_pure_dict(nnx.state(model, EXPORTED))))
    out = _export_rows(spec, TOP_TENSORS, pure, "")
    for i in range(spec.num_layers):
        out.update(_export_rows(spec, layer_rows(spec, i), pure["layers"][i],
                                f"model.layers.{i}."))
    return {name: np.ascontiguousarray(value) for name, value in out.items()}
