"""Hugging Face model directories <-> moejax: config.json and safetensors, Mixtral.

A directory as `save_pretrained` writes it: `config.json` plus `model.safetensors`, or
`model-0000i-of-0000n.safetensors` shards with `model.safetensors.index.json`.

- `spec_from_hf_config` / `hf_config_from_spec`: the options both ways. An HF option moejax
  cannot honour (another `model_type`, a sliding window, tied embeddings, an activation other
  than SiLU) and a moejax option HF Mixtral cannot express are errors naming them.
- `read_hf_dir`: (spec, tensors in the per-expert layout). It reads both tensor layouts:
  transformers 4's per-expert names (`block_sparse_moe.experts.{e}.w1/w2/w3`, as the hub's
  checkpoints store them) and transformers 5's in-memory fused names (`mlp.gate`,
  `mlp.experts.gate_up_proj [E, 2F, D]` = gate rows then up rows, `mlp.experts.down_proj
  [E, D, F]`), which `per_expert_layout` renames and splits.
- `write_hf_dir`: the per-expert layout (what transformers itself saves), in the model's
  float32 or a given dtype, sharded above `max_shard_bytes` with an index.

The tensor mapping itself is `convert_hf.from_hf_mixtral` / `to_hf_mixtral`.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Mapping

import ml_dtypes
import numpy as np

from moejax.models.convert_hf import check_mixtral_spec
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


def spec_from_hf_config(hf: Mapping, **overrides) -> DecoderSpec:
    """An HF Mixtral `config.json` (as a dict) -> DecoderSpec (layers scanned unless
    `scan_layers=False` is passed among the top-level `overrides`).

    Raises:
      ValueError: another model_type, or an option moejax cannot honour, named.
    """
    if hf.get("model_type") != "mixtral":
        raise ValueError(f"HF config model_type={hf.get('model_type')!r} is not supported "
                         "(allowed: 'mixtral')")
    unsupported = {"sliding_window": None, "tie_word_embeddings": False, "hidden_act": "silu",
                   "attention_bias": False}
    for key, allowed in unsupported.items():
        if hf.get(key, allowed) != allowed:
            raise ValueError(f"HF config {key}={hf[key]!r} is not supported (allowed: "
                             f"{allowed!r})")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim")  # None: hidden_size // heads, as moejax's default
    head_dim = None if head_dim == hf["hidden_size"] // heads else head_dim
    model = {
        "vocab_size": hf["vocab_size"], "d_model": hf["hidden_size"],
        "num_layers": hf["num_hidden_layers"], "num_heads": heads,
        "num_kv_heads": hf.get("num_key_value_heads") or heads, "head_dim": head_dim,
        "d_ff": hf["intermediate_size"], "rope_theta": _rope_theta(hf),
        "norm_eps": hf.get("rms_norm_eps", 1e-5),
        "moe": {"num_experts": hf["num_local_experts"], "top_k": hf["num_experts_per_tok"],
                "d_hidden": hf["intermediate_size"],
                "router": {"jitter": float(hf.get("router_jitter_noise") or 0.0)}},
        **overrides,
    }
    spec = decoder_spec_from_config(model)
    check_mixtral_spec(spec)
    return spec


def hf_config_from_spec(spec: DecoderSpec, torch_dtype: str = "float32") -> dict:
    """DecoderSpec -> an HF Mixtral `config.json` dict (v4 and v5 rope keys both written).

    Raises:
      ValueError: an option HF Mixtral cannot express, named (`check_mixtral_spec`).
    """
    check_mixtral_spec(spec)
    return {
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
        "vocab_size": spec.vocab_size, "hidden_size": spec.d_model,
        "num_hidden_layers": spec.num_layers, "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads, "head_dim": spec.resolved_head_dim,
        "intermediate_size": spec.moe.d_hidden, "num_local_experts": spec.moe.num_experts,
        "num_experts_per_tok": spec.moe.top_k, "rms_norm_eps": spec.norm_eps,
        "rope_theta": spec.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": spec.rope_theta},
        "router_jitter_noise": spec.moe.router.jitter, "hidden_act": "silu",
        "sliding_window": None, "tie_word_embeddings": False, "attention_dropout": 0.0,
        "output_router_logits": False, "max_position_embeddings": 32768,
        "torch_dtype": torch_dtype, "dtype": torch_dtype,
    }


def per_expert_layout(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames transformers 5's fused MoE tensors to the per-expert (hub) layout; other
    names pass through. `gate_up_proj [E, 2F, D]` splits into w1 (rows :F) and w3 (F:)."""
    out = {}
    for name, value in tensors.items():
        match = _FUSED.match(name)
        if match is None:
            out[name] = value
            continue
        prefix, kind = f"model.layers.{match[1]}.block_sparse_moe.", match[2]
        if kind == "gate.weight":
            out[prefix + "gate.weight"] = value
            continue
        value = np.asarray(value)
        for e in range(value.shape[0]):
            expert = f"{prefix}experts.{e}."
            if kind == "experts.down_proj":
                out[expert + "w2.weight"] = value[e]
            else:
                f = value.shape[1] // 2
                out[expert + "w1.weight"], out[expert + "w3.weight"] = value[e, :f], value[e, f:]
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


def read_hf_dir(directory, **overrides) -> tuple[DecoderSpec, dict[str, np.ndarray]]:
    """An HF Mixtral directory -> (DecoderSpec, tensors by per-expert HF name, NumPy, in their
    stored dtype; bfloat16 as ml_dtypes.bfloat16).

    Raises:
      FileNotFoundError: no config.json or no safetensors.
      ValueError: an unsupported config option (see `spec_from_hf_config`).
    """
    from safetensors import safe_open  # interop only: not needed to import moejax

    directory = pathlib.Path(directory).expanduser()
    config = directory / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{config} does not exist (not a Hugging Face model directory)")
    spec = spec_from_hf_config(json.loads(config.read_text()), **overrides)
    tensors = {}
    for path in _shard_files(directory):
        with safe_open(path, framework="flax") as f:  # keeps bfloat16 (NumPy has none)
            for name in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                tensors[name] = np.asarray(f.get_tensor(name))
    return spec, per_expert_layout(tensors)


def write_hf_dir(tensors: Mapping[str, np.ndarray], spec: DecoderSpec, out,
                 *, dtype: str = "float32", max_shard_bytes: int = 5 * 2**30) -> pathlib.Path:
    """Writes config.json and the tensors (per-expert HF names, e.g. `to_hf_mixtral`) as
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
