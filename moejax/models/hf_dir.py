"""Hugging Face model directories <-> moejax: config.json and safetensors (Mixtral, Qwen3-MoE).

A directory as `save_pretrained` writes it: `config.json` plus `model.safetensors`, or
`model-0000i-of-0000n.safetensors` shards with `model.safetensors.index.json`.

- `spec_from_hf_config` / `hf_config_from_spec`: the options both ways. An HF option moejax
  cannot honour (another `model_type`, a sliding window, tied embeddings, an activation other
  than SiLU, attention biases, scaled RoPE, dense layers no `first_dense_layers` / `moe_every`
  pattern gives) and a moejax option the family cannot express are errors naming them.
- `read_hf_dir`: (spec, tensors in the per-expert layout), each tensor read from its file
  only when converted (`np.asarray`), in its stored dtype. It reads both tensor layouts:
  the hub's per-expert names (Mixtral `block_sparse_moe.experts.{e}.w1/w2/w3`, Qwen3-MoE
  `mlp.experts.{e}.gate_proj/up_proj/down_proj`) and transformers 5's in-memory fused names
  (`mlp.gate`, `mlp.experts.gate_up_proj [E, 2F, D]` = gate rows then up rows,
  `mlp.experts.down_proj [E, D, F]`), which `per_expert_layout` renames and slices.
- `write_hf_dir`: the per-expert layout (what transformers itself saves), in the model's
  float32 or a given dtype, sharded above `max_shard_bytes` with an index.

The tensor mapping itself is `convert_hf.from_hf` / `to_hf`.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Mapping

import ml_dtypes
import numpy as np

from moejax.models.convert_hf import FAMILIES, HFFamily, hf_family
from moejax.models.decoder import DecoderSpec, decoder_spec_from_config

INDEX = "model.safetensors.index.json"
_FUSED = re.compile(r"^model\.layers\.(\d+)\.mlp\.(gate\.weight|experts\.gate_up_proj|"
                    r"experts\.down_proj)$")


def _rope_theta(hf: Mapping) -> float:
    """v4 `rope_theta`, or v5 `rope_parameters.rope_theta` (default rope only)."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ValueError(f"HF config rope type {kind!r} is not supported (allowed: 'default')")
    return float(rope.get("rope_theta", hf.get("rope_theta", 1e6)))


def _num_experts(hf: Mapping) -> int:
    """The hub's Qwen3 configs say `num_experts`; transformers 5 writes `num_local_experts`."""
    return hf["num_experts"] if "num_experts" in hf else hf["num_local_experts"]


def _dense_pattern(hf: Mapping) -> tuple[int, int]:
    """Qwen3-MoE's MoE layers (not in `mlp_only_layers`, `(i + 1) % decoder_sparse_step ==
    0`) as moejax's (first_dense_layers, moe_every)."""
    layers = hf["num_hidden_layers"]
    step, dense = hf.get("decoder_sparse_step") or 1, set(hf.get("mlp_only_layers") or ())
    moe = [i for i in range(layers)
           if _num_experts(hf) > 0 and i not in dense and (i + 1) % step == 0]
    if not moe:
        return layers, 1
    every = moe[1] - moe[0] if len(moe) > 1 else (step if moe[0] + step >= layers else layers)
    if moe != list(range(moe[0], layers, every)):
        raise ValueError(
            f"HF config mlp_only_layers={sorted(dense)} with decoder_sparse_step={step} puts "
            f"MoE layers at {moe}; moejax needs them at first_dense_layers + k * moe_every "
            "up to the last layer")
    return moe[0], every


def spec_from_hf_config(hf: Mapping, **overrides) -> DecoderSpec:
    """An HF Mixtral or Qwen3-MoE `config.json` (as a dict) -> DecoderSpec (layers scanned
    unless `scan_layers=False` is passed among the top-level `overrides`).

    Raises:
      ValueError: another model_type, or an option moejax cannot honour, named.
    """
    kind = hf.get("model_type")
    if kind not in FAMILIES:
        raise ValueError(f"HF config model_type={kind!r} is not supported (allowed: "
                         f"{', '.join(map(repr, FAMILIES))})")
    qwen = kind == "qwen3_moe"
    unsupported = {"tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False,
                   ("use_sliding_window" if qwen else "sliding_window"): False if qwen else None}
    for key, allowed in unsupported.items():
        if hf.get(key, allowed) != allowed:
            raise ValueError(f"HF config {key}={hf[key]!r} is not supported (allowed: "
                             f"{allowed!r})")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim")  # None: hidden_size // heads, as moejax's default
    head_dim = None if head_dim == hf["hidden_size"] // heads else head_dim
    first_dense, every = _dense_pattern(hf) if qwen else (0, 1)
    router = ({"normalize_gates": bool(hf.get("norm_topk_prob", False))} if qwen else
              {"jitter": float(hf.get("router_jitter_noise") or 0.0)})
    model = {
        "vocab_size": hf["vocab_size"], "d_model": hf["hidden_size"],
        "num_layers": hf["num_hidden_layers"], "num_heads": heads,
        "num_kv_heads": hf.get("num_key_value_heads") or heads, "head_dim": head_dim,
        "d_ff": hf["intermediate_size"], "rope_theta": _rope_theta(hf),
        "norm_eps": hf.get("rms_norm_eps", 1e-6 if qwen else 1e-5), "qk_norm": qwen,
        "first_dense_layers": first_dense, "moe_every": every,
        "moe": {"num_experts": _num_experts(hf),
                "top_k": hf["num_experts_per_tok"],
                "d_hidden": hf["moe_intermediate_size" if qwen else "intermediate_size"],
                "router": router},
        **overrides,
    }
    spec = decoder_spec_from_config(model)
    hf_family(spec)  # the spec must convert back
    return spec


def hf_config_from_spec(spec: DecoderSpec, torch_dtype: str = "float32") -> dict:
    """DecoderSpec -> an HF `config.json` dict of its family (`convert_hf.hf_family`: Qwen3-MoE
    with `model.qk_norm`, else Mixtral; v4 and v5 rope keys both written).

    Raises:
      ValueError: an option the family cannot express, named.
    """
    family = hf_family(spec)
    config = {
        "architectures": [family.architecture], "model_type": family.model_type,
        "vocab_size": spec.vocab_size, "hidden_size": spec.d_model,
        "num_hidden_layers": spec.num_layers, "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads, "head_dim": spec.resolved_head_dim,
        "num_experts_per_tok": spec.moe.top_k, "rms_norm_eps": spec.norm_eps,
        "rope_theta": spec.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": spec.rope_theta},
        "hidden_act": "silu", "tie_word_embeddings": False, "attention_bias": False,
        "attention_dropout": 0.0, "output_router_logits": False,
        "max_position_embeddings": 32768, "torch_dtype": torch_dtype, "dtype": torch_dtype,
    }
    if family.model_type == "mixtral":
        return {**config, "intermediate_size": spec.moe.d_hidden,
                "num_local_experts": spec.moe.num_experts, "sliding_window": None,
                "router_jitter_noise": spec.moe.router.jitter}
    step = spec.moe_every  # Qwen3's own pattern when it fits, else every dense layer listed
    moe_layers = [i for i in range(spec.num_layers) if spec.is_moe_layer(i)]
    if any((i + 1) % step for i in moe_layers):
        step = 1
    return {**config, "intermediate_size": spec.d_ff, "moe_intermediate_size": spec.moe.d_hidden,
            "num_experts": spec.moe.num_experts, "norm_topk_prob": spec.moe.router.normalize_gates,
            "decoder_sparse_step": step,
            "mlp_only_layers": [i for i in range(spec.num_layers)
                                if (i + 1) % step == 0 and not spec.is_moe_layer(i)],
            "use_sliding_window": False, "sliding_window": None}


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
        from safetensors import safe_open  # interop only: not needed to import moejax

        with safe_open(self.path, framework="numpy") as f:
            value = f.get_slice(self.name)[self.index] if self.index else f.get_tensor(self.name)
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
    index = directory / INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{directory} holds neither model.safetensors nor {INDEX}")


def read_hf_dir(directory, **overrides) -> tuple[DecoderSpec, dict[str, StoredTensor]]:
    """An HF Mixtral or Qwen3-MoE directory -> (DecoderSpec, tensors by per-expert HF name).

    Nothing is read but the headers: each tensor is a `StoredTensor`, read by `np.asarray`
    in its stored dtype (bfloat16 as ml_dtypes.bfloat16), so a converter that takes one at
    a time never holds the checkpoint twice.

    Raises:
      FileNotFoundError: no config.json or no safetensors.
      ValueError: an unsupported config option (see `spec_from_hf_config`).
    """
    from safetensors import safe_open  # interop only: not needed to import moejax

    directory = pathlib.Path(directory).expanduser()
    config = directory / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{config} does not exist (not a Hugging Face model directory)")
    hf = json.loads(config.read_text())
    spec = spec_from_hf_config(hf, **overrides)
    tensors = {}
    for path in _shard_files(directory):
        with safe_open(path, framework="numpy") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                tensors[name] = StoredTensor(path, name, f.get_slice(name).get_shape())
    return spec, per_expert_layout(tensors, FAMILIES[hf["model_type"]])


def write_hf_dir(tensors: Mapping[str, np.ndarray], spec: DecoderSpec, out,
                 *, dtype: str = "float32", max_shard_bytes: int = 5 * 2**30) -> pathlib.Path:
    """Writes config.json and the tensors (per-expert HF names, e.g. `to_hf`) as
    safetensors in `dtype` ("float32" or "bfloat16"), split into shards of at most
    `max_shard_bytes` (a larger tensor gets a shard of its own) with an index when more
    than one. Returns the directory."""
    from safetensors.numpy import save_file

    kinds = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
    if dtype not in kinds:
        raise ValueError(f"dtype={dtype!r}; allowed: {sorted(kinds)}")
    out = pathlib.Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
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
    for file, shard in zip(names, shards, strict=True):
        arrays = {name: np.ascontiguousarray(np.asarray(tensors[name]).astype(kinds[dtype]))
                  for name in shard}
        save_file(arrays, out / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
        total += sum(a.nbytes for a in arrays.values())
    if len(shards) > 1:
        (out / INDEX).write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    (out / "config.json").write_text(
        json.dumps(hf_config_from_spec(spec, dtype), indent=2) + "\n")
    return out
