"""Hugging Face model directories <-> moejax: config.json and safetensors (`hf_families.FAMILIES`).

A directory as `save_pretrained` writes it: `config.json` plus `model.safetensors`, or
`model-0000i-of-0000n.safetensors` shards with `model.safetensors.index.json`.

- `spec_from_hf_config` / `hf_config_from_spec`: the options both ways, driven by the family
  record (`hf_families.py`) of config.json's `model_type` / of `model.hf_family`. An HF option
  moejax cannot honour (another `model_type`, a sliding window, tied embeddings, an activation
  other than SiLU, attention biases, scaled RoPE, dense layers no `first_dense_layers` /
  `moe_every` pattern gives) and a moejax option the family cannot express are errors naming
  them.
- `read_hf_dir`: (spec, tensors in the per-expert layout), each tensor read from its file
  only when converted (`np.asarray`), in its stored dtype. It reads both tensor layouts:
  the hub's per-expert names (Mixtral `block_sparse_moe.experts.{e}.w1/w2/w3`, Qwen3-MoE
  `mlp.experts.{e}.gate_proj/up_proj/down_proj`) and transformers 5's in-memory fused names
  (`mlp.gate`, `mlp.experts.gate_up_proj [E, 2F, D]` = gate rows then up rows,
  `mlp.experts.down_proj [E, D, F]`), which `per_expert_layout` renames and slices.
- `write_hf_dir`: the per-expert layout (what transformers itself saves), in the model's
  float32 or a given dtype, sharded above `max_shard_bytes` with an index, and a
  `generation_config.json` when given one.
- `HF_KEPT` / `kept_keys`: what config.json says that moejax does not model but an export
  must write back (the context length, the special token ids). `moejax-hf import` keeps them
  under the export config's `KEPT` key ("hf"), and `hf_config_from_spec` writes them.

The tensor mapping itself is `convert_hf.from_hf` / `to_hf`.

An HF directory is untrusted input, checked before anything is allocated from it: config.json
and the index must be JSON objects of at most `MAX_JSON_BYTES` (errors name the file); every
config value is of its kind and in range (`hf_families.KINDS`); the index must have a
`weight_map` object whose files lie inside the directory (symlinks followed; `inside`); a
header that safetensors cannot read, or a tensor with no elements, is an error naming the
file. Sizes from the config are compared with the tensors present before any list they size
is built (`convert_hf.from_hf`), and each tensor is checked (a float dtype, finite values)
as it is converted.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType

import ml_dtypes
import numpy as np

from moejax.atomic import atomic_directory
from moejax.models.decoder import DecoderSpec, decoder_spec_from_config
from moejax.models.hf_families import (
    BOUNDS,
    COMMON_KEYS,
    COMMON_WRITTEN,
    DENSE_LAYOUTS,
    FAMILIES,
    KINDS,
    HFFamily,
    Key,
    dotted,
    family_of,
    set_dotted,
)
from moejax.options import check_choice, check_int

INDEX = "model.safetensors.index.json"
GENERATION_CONFIG = "generation_config.json"
# config.json keys moejax does not model but an export writes back, and where an export's
# config.json keeps them (`moejax-hf import`)
_KEPT_KINDS = MappingProxyType({"max_position_embeddings": "size", "bos_token_id": "id",
                                "eos_token_id": "ids", "pad_token_id": "id"})
HF_KEPT = tuple(_KEPT_KINDS)
KEPT = "hf"
MAX_JSON_BYTES = 64 * 2**20  # config.json or an index larger than this is refused unread
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}
_FUSED = re.compile(r"^model\.layers\.(\d+)\.mlp\.(gate\.weight|experts\.gate_up_proj|"
                    r"experts\.down_proj)$")


def _rope_theta(hf: Mapping) -> float:
    """v4 `rope_theta`, or v5 `rope_parameters.rope_theta` (default rope only), > 0."""
    source = next((key for key in ("rope_parameters", "rope_scaling") if hf.get(key)), None)
    rope = hf[source] if source else {}
    if not isinstance(rope, Mapping):
        raise ValueError(f"HF config {source}={rope!r}; allowed: an object or null")
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ValueError(f"HF config rope type {kind!r} is not supported (allowed: 'default')")
    name, theta = ((f"{source}.rope_theta", rope["rope_theta"])
                   if rope.get("rope_theta") is not None else ("rope_theta", hf.get("rope_theta")))
    theta = 1e6 if theta is None else theta
    KINDS["positive"](f"HF config {name}", theta)
    return float(theta)


def _check_bounds(hf: Mapping, keys: tuple[Key, ...], values: dict) -> None:
    """`BOUNDS` on {option: value read}: e.g. num_experts_per_tok <= num_local_experts."""
    source = {key.ours: key.source(hf) for key in keys}
    for low, high in BOUNDS:
        if values[low] > values[high]:
            raise ValueError(f"HF config {source[low]}={values[low]} > "
                             f"{source[high]}={values[high]}")


def spec_from_hf_config(hf: Mapping, **overrides) -> DecoderSpec:
    """An HF `config.json` (as a dict) of a family in `FAMILIES` -> DecoderSpec (its
    `hf_family` set; layers scanned unless `scan_layers=False` is among the top-level
    `overrides`).

    Raises:
      ValueError: not a dict, another model_type, a missing key, a value not of its kind or
        out of range, or an option moejax cannot honour, named.
    """
    if not isinstance(hf, Mapping):
        raise ValueError(f"HF config is {_JSON_TYPES.get(type(hf), type(hf).__name__)}, not "
                         "an object")
    check_choice("HF config model_type", hf.get("model_type"), tuple(FAMILIES))
    family = FAMILIES[hf["model_type"]]
    for key, allowed in family.unsupported.items():
        if hf.get(key, allowed) != allowed:
            raise ValueError(f"HF config {key}={hf[key]!r} is not supported (allowed: "
                             f"{allowed!r})")
    model = {"hf_family": family.model_type, "rope_theta": _rope_theta(hf)}
    keys = (*COMMON_KEYS, *family.keys)
    values = {key.ours: key.read(hf) for key in keys}
    _check_bounds(hf, keys, values)
    for name, value in values.items():
        set_dotted(model, name, value)
    head_dim = hf.get("head_dim")  # None: hidden_size // heads, as moejax's default
    check_int("HF config head_dim", head_dim, optional=True)
    model["head_dim"] = None if head_dim == model["d_model"] // model["num_heads"] else head_dim
    for name, value in family.requires.items():
        set_dotted(model, name, value)
    if family.dense_layout is not None:
        read, _ = DENSE_LAYOUTS[family.dense_layout]
        model.update(read(hf, model["moe"]["num_experts"]))
    spec = decoder_spec_from_config({**model, **overrides})
    family_of(spec)  # the spec must convert back
    return spec


def kept_keys(hf: Mapping) -> dict:
    """An HF config.json dict -> {key: value or None} for each of `HF_KEPT`, each checked
    (a context length >= 1; token ids >= 0, eos also a list of them).

    Raises:
      ValueError: a value not of its kind, naming the key and the value.
    """
    for key, kind in _KEPT_KINDS.items():
        if hf.get(key) is not None:
            KINDS[kind](f"HF config {key}", hf[key])
    return {key: hf.get(key) for key in HF_KEPT}


def read_kept(directory) -> dict:
    """`kept_keys` of an HF directory's config.json (see `read_config`)."""
    return kept_keys(read_config(directory))


def read_config(directory) -> dict:
    """An HF directory's config.json as a dict.

    Raises:
      FileNotFoundError: there is none.
      ValueError: it is larger than `MAX_JSON_BYTES`, not JSON, or not a JSON object; names
        the file.
    """
    path = pathlib.Path(directory).expanduser() / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (not a Hugging Face model directory)")
    return _json_object(path)


def _json_object(path: pathlib.Path) -> dict:
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{path} holds {size} bytes; allowed: at most {MAX_JSON_BYTES}")
    try:
        value = json.loads(path.read_text())
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds {_JSON_TYPES.get(type(value), type(value).__name__)}, "
                         "not a JSON object")
    return value


def inside(directory, name: str, what: str) -> pathlib.Path:
    """`directory / name` with symlinks resolved, which must lie inside `directory` (or, for a
    hub cache snapshot `.../snapshots/<revision>`, in that cache's `blobs/`, where its
    symlinks lead).

    Raises:
      ValueError: it leads elsewhere (an absolute path, `..`, a symlink out); names `what`.
    """
    root = pathlib.Path(directory).expanduser().resolve()
    path = (root / name).resolve()
    roots = (root, root.parent.parent / "blobs") if root.parent.name == "snapshots" else (root,)
    if not any(path.is_relative_to(allowed) for allowed in roots):
        raise ValueError(f"{what} {name!r} leads to {path}, outside {root}")
    return path


def hf_config_from_spec(spec: DecoderSpec, torch_dtype: str = "float32", *,
                        max_position_embeddings: int | None = None,
                        bos_token_id: int | None = None, eos_token_id: int | list | None = None,
                        pad_token_id: int | None = None) -> dict:
    """DecoderSpec -> an HF `config.json` dict of its family (`model.hf_family`; v4 and v5
    rope keys both written).

    Args:
      spec: the model.
      torch_dtype: the stored tensors' dtype, written as `torch_dtype` and `dtype`.
      max_position_embeddings: the context length to declare (moejax's RoPE has no limit of
        its own); None writes 32768 (`COMMON_WRITTEN`), used only when nothing says otherwise.
      bos_token_id, eos_token_id, pad_token_id: the special ids (an imported config's, or the
        tokenizer's), each written when not None (eos may be a list, as HF allows).

    Raises:
      ValueError: an option the family cannot express, named.
    """
    family = family_of(spec)
    config = {"architectures": [family.architecture], "model_type": family.model_type,
              "head_dim": spec.resolved_head_dim, "rope_theta": spec.rope_theta,
              "rope_parameters": {"rope_type": "default", "rope_theta": spec.rope_theta},
              **COMMON_WRITTEN, **family.written, "torch_dtype": torch_dtype,
              "dtype": torch_dtype}
    if max_position_embeddings is not None:
        config["max_position_embeddings"] = int(max_position_embeddings)
    ids = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id,
           "pad_token_id": pad_token_id}
    config.update({key: value for key, value in ids.items() if value is not None})
    config.update({key.hf[0]: dotted(spec, key.ours) for key in (*COMMON_KEYS, *family.keys)
                   if key.write})
    if family.dense_layout is not None:
        _, write = DENSE_LAYOUTS[family.dense_layout]
        config.update(write(spec))
    return config


class StoredTensor:
    """A tensor (or an [index] of it) in a safetensors file, read when `np.asarray` asks."""

    def __init__(self, path: pathlib.Path, name: str, shape: tuple, index=()):
        self.path, self.name, self.shape, self.index = path, name, tuple(shape), index

    def __getitem__(self, index) -> StoredTensor:
        """An int or (int, slice) index of the first axes, still unread."""
        index = index if isinstance(index, tuple) else (index,)
        shape = [len(range(*i.indices(n))) if isinstance(i, slice) else None
                 for i, n in zip(index, self.shape, strict=False)]
        shape = [n for n in shape if n is not None] + list(self.shape[len(index):])
        return StoredTensor(self.path, self.name, shape, index)

    def __array__(self, dtype=None, copy=None):
        from safetensors import SafetensorError, safe_open  # interop only

        try:
            with safe_open(self.path, framework="numpy") as f:
                value = (f.get_slice(self.name)[self.index] if self.index
                         else f.get_tensor(self.name))
        except (SafetensorError, TypeError) as error:  # e.g. a dtype NumPy does not have
            raise ValueError(f"HF tensor {self.name} in {self.path} does not read: "
                             f"{error}") from None
        return value if dtype is None else value.astype(dtype)


def per_expert_layout(tensors: Mapping, family: HFFamily = FAMILIES["mixtral"]) -> dict:
    """Renames transformers 5's fused MoE tensors to the hub's per-expert layout of `family`;
    other names pass through. `gate_up_proj [E, 2F, D]` splits into the gate (rows :F) and up
    (F:) projections. Values are sliced with `[...]` only (a `StoredTensor` stays unread)."""
    gate, up, down = family.experts
    out = {}
    for name, value in tensors.items():
        match = _FUSED.match(name)
        if match is None:
            out[name] = value
            continue
        prefix, kind = f"model.layers.{match[1]}.{family.moe}.", match[2]
        if kind == "gate.weight":
            out[prefix + "gate.weight"] = value
            continue
        for e in range(value.shape[0]):
            expert = f"{prefix}experts.{e}."
            if kind == "experts.down_proj":
                out[f"{expert}{down}.weight"] = value[e]
            else:
                f = value.shape[1] // 2
                out[f"{expert}{gate}.weight"] = value[e, :f]
                out[f"{expert}{up}.weight"] = value[e, f:]
    return out


def _shard_files(directory: pathlib.Path) -> list[pathlib.Path]:
    """The safetensors files: the index's (a `weight_map` object of names -> files inside
    the directory), else model.safetensors."""
    index = directory / INDEX
    if index.is_file():
        weight_map = _json_object(index).get("weight_map")
        if not (isinstance(weight_map, dict)
                and all(isinstance(file, str) for file in weight_map.values())):
            raise ValueError(f"{index} has no 'weight_map' object of tensor name -> file name")
        files = [inside(directory, name, f"{index} entry") for name in set(weight_map.values())]
    elif (directory / "model.safetensors").is_file():
        files = [inside(directory, "model.safetensors", "weights file")]
    else:
        raise FileNotFoundError(f"{directory} holds neither model.safetensors nor {INDEX}")
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{file} does not exist (named by {index})")
    return sorted(files)


def _headers(path: pathlib.Path) -> dict[str, StoredTensor]:
    """The tensors of one safetensors file, unread (only its header is)."""
    from safetensors import SafetensorError, safe_open  # interop only

    try:
        with safe_open(path, framework="numpy") as f:
            shapes = {name: tuple(f.get_slice(name).get_shape())
                      for name in f.keys()}  # noqa: SIM118 - not a Mapping
    except SafetensorError as error:
        raise ValueError(f"{path} is not a readable safetensors file ({error})") from None
    empty = next((name for name, shape in shapes.items() if 0 in shape), None)
    if empty is not None:
        raise ValueError(f"HF tensor {empty} in {path} has shape {shapes[empty]}: no elements")
    return {name: StoredTensor(path, name, shape) for name, shape in shapes.items()}


def read_hf_dir(directory, **overrides) -> tuple[DecoderSpec, dict[str, StoredTensor]]:
    """An HF Mixtral or Qwen3-MoE directory -> (DecoderSpec, tensors by per-expert HF name).

    Nothing is read but the headers: each tensor is a `StoredTensor`, read by `np.asarray`
    in its stored dtype (bfloat16 as ml_dtypes.bfloat16), so a converter that takes one at
    a time never holds the checkpoint twice.

    Raises:
      FileNotFoundError: no config.json or no safetensors.
      ValueError: a config.json or index that is not a JSON object, an unsupported or
        invalid config value (see `spec_from_hf_config`), a weights file outside the
        directory or unreadable, named.
    """
    directory = pathlib.Path(directory).expanduser()
    hf = read_config(directory)
    spec = spec_from_hf_config(hf, **overrides)
    tensors = {}
    for path in _shard_files(directory):
        tensors.update(_headers(path))
    return spec, per_expert_layout(tensors, FAMILIES[hf["model_type"]])


def write_hf_dir(tensors: Mapping[str, np.ndarray], spec: DecoderSpec, out,
                 *, dtype: str = "float32", max_shard_bytes: int = 5 * 2**30,
                 kept: Mapping | None = None, generation: Mapping | None = None,
                 overwrite: bool = False, extra: Callable | None = None) -> pathlib.Path:
    """Writes config.json and the tensors (per-expert HF names, e.g. `to_hf`) as
    safetensors in `dtype` ("float32" or "bfloat16"), split into shards of at most
    `max_shard_bytes` (a larger tensor gets a shard of its own) with an index when more
    than one. Returns the absolute directory, written whole or not at all (`moejax.atomic`;
    `overwrite` replaces an HF directory only); `extra(directory)` may add files to it.

    `kept` ({`HF_KEPT` key: value}; other keys ignored) goes into config.json (see
    `hf_config_from_spec`); `generation`, when given, is written as generation_config.json
    (what `generate` reads: its eos_token_id stops generation)."""
    from safetensors.numpy import save_file

    kinds = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
    check_choice("dtype", dtype, kinds)
    kept = {key: (kept or {}).get(key) for key in HF_KEPT}
    config = hf_config_from_spec(spec, dtype, **kept)  # its errors before any file is written
    shards, size = [[]], 0
    for name in sorted(tensors):
        nbytes = int(np.prod(np.shape(tensors[name]))) * np.dtype(kinds[dtype]).itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map, total = {}, 0
    with atomic_directory(out, overwrite=overwrite, what="Hugging Face model directory",
                          marks=("config.json", INDEX, "model.safetensors")) as tmp:
        for file, shard in zip(names, shards, strict=True):
            arrays = {name: np.ascontiguousarray(np.asarray(tensors[name]).astype(kinds[dtype]))
                      for name in shard}
            save_file(arrays, tmp / file, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, file))
            total += sum(a.nbytes for a in arrays.values())
        if len(shards) > 1:
            (tmp / INDEX).write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if generation is not None:
            (tmp / GENERATION_CONFIG).write_text(json.dumps(dict(generation), indent=2) + "\n")
        if extra is not None:
            extra(tmp)
    return pathlib.Path(out).expanduser().resolve()
