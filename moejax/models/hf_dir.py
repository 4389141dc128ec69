"""Hugging Face model directories <-> moejax: config.json and safetensors (`hf_families.FAMILIES`).

A directory as `save_pretrained` writes it: `config.json` plus `model.safetensors`, or
`model-0000i-of-0000n.safetensors` shards with `model.safetensors.index.json`.

- The options both ways (config.json <-> DecoderSpec) are `hf_config.py`'s.
- `read_hf_dir`: (spec, tensors in the per-expert layout), each tensor read from its file
  only when converted (`np.asarray`), in its stored dtype. It reads both tensor layouts:
  the hub's per-expert names (Mixtral `block_sparse_moe.experts.{e}.w1/w2/w3`, Qwen3-MoE
  `mlp.experts.{e}.gate_proj/up_proj/down_proj`) and transformers 5's in-memory fused names
  (`mlp.gate`, `mlp.experts.gate_up_proj [E, 2F, D]` = gate rows then up rows,
  `mlp.experts.down_proj [E, D, F]`), which `per_expert_layout` renames and slices.
- `write_hf_dir`: the per-expert layout (what transformers itself saves), in the model's
  float32 or a given dtype, sharded above `max_shard_bytes` with an index, and a
  `generation_config.json` when given one.
- DeepSeek-V3's multi-token prediction layers (`model.layers.{L}` and beyond, counted by
  `num_nextn_predict_layers`) are skipped by `read_hf_dir` with a warning naming them, as
  transformers skips them.

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
import logging
import pathlib
import re
from collections.abc import Callable, Mapping

import ml_dtypes
import numpy as np

from moejax.atomic import atomic_directory
from moejax.models.decoder import DecoderSpec
from moejax.models.hf_config import (
    HF_KEPT,
    JSON_TYPES,
    hf_config_from_spec,
    kept_keys,
    skipped_layers,
    spec_from_hf_config,
)
from moejax.models.hf_families import FAMILIES, HFFamily
from moejax.options import check_choice

_log = logging.getLogger(__name__)
INDEX = "model.safetensors.index.json"
GENERATION_CONFIG = "generation_config.json"
MAX_JSON_BYTES = 64 * 2**20  # config.json or an index larger than this is refused unread
_FUSED = re.compile(r"^model\.layers\.(\d+)\.mlp\.(gate\.weight|experts\.gate_up_proj|"
                    r"experts\.down_proj)$")


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
        raise ValueError(f"{path} holds {JSON_TYPES.get(type(value), type(value).__name__)}, "
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
    return spec, per_expert_layout(_skip_layers(tensors, spec, skipped_layers(hf)),
                                   FAMILIES[hf["model_type"]])


def _skip_layers(tensors: dict, spec: DecoderSpec, count: int) -> dict:
    """`tensors` without those of layers num_layers .. num_layers + count - 1 (DeepSeek-V3's
    MTP modules), logged as a warning naming the layers and how many tensors."""
    if count == 0:
        return tensors
    skipped = {f"model.layers.{spec.num_layers + j}." for j in range(min(count, 64))}
    kept = {name: value for name, value in tensors.items()
            if ".".join(name.split(".")[:3]) + "." not in skipped}
    if len(kept) < len(tensors):
        _log.warning("skipped %d tensors of the multi-token prediction layers %s (moejax "
                     "keeps no MTP modules, as transformers)", len(tensors) - len(kept),
                     sorted(skipped))
    return kept


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
