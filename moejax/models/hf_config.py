"""Hugging Face config.json <-> moejax model options, driven by the family records.

- `spec_from_hf_config` / `hf_config_from_spec`: the options both ways, driven by the family
  record (`hf_families.py`) of config.json's `model_type` / of `model.hf_family`. An HF option
  moejax cannot honour (another `model_type`, a sliding window, tied embeddings, an activation
  other than SiLU, attention biases, a RoPE scaling other than YaRN where the family allows
  it, dense layers no `first_dense_layers` / `moe_every` pattern gives) and a moejax option the
  family cannot express are errors naming them.
- `HF_KEPT` / `kept_keys`: what config.json says that moejax does not model but an export
  must write back (the context length, the special token ids). `moejax-hf import` keeps them
  under the export config's `KEPT` key ("hf"), and `hf_config_from_spec` writes them.

config.json is untrusted input: every value read is checked against its key's kind
(`hf_families.KINDS`) and `BOUNDS`, each error one line naming the key and the value.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from moejax.models.decoder import DecoderSpec, decoder_spec_from_config
from moejax.models.hf_families import (
    BOUNDS,
    COMMON_KEYS,
    COMMON_WRITTEN,
    FAMILIES,
    KINDS,
    LAYOUTS,
    Key,
    dotted,
    family_of,
    set_dotted,
)
from moejax.options import check_choice, check_int

# config.json keys moejax does not model but an export writes back, and where an export's
# config.json keeps them (`moejax-hf import`)
_KEPT_KINDS = MappingProxyType({"max_position_embeddings": "size", "bos_token_id": "id",
                                "eos_token_id": "ids", "pad_token_id": "id"})
HF_KEPT = tuple(_KEPT_KINDS)
KEPT = "hf"
JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number",
              bool: "a boolean", type(None): "null"}
# YaRN keys of rope_parameters / rope_scaling -> (RopeScaling field, KINDS row)
_YARN = MappingProxyType({
    "factor": ("factor", "positive"),
    "original_max_position_embeddings": ("original_max_position_embeddings", "size"),
    "beta_fast": ("beta_fast", "positive"), "beta_slow": ("beta_slow", "positive"),
    "mscale": ("mscale", "nonnegative"), "mscale_all_dim": ("mscale_all_dim", "nonnegative"),
    "attention_factor": ("attention_factor", "nonnegative"), "truncate": ("truncate", "bool")})


def _rope(hf: Mapping, allow_yarn: bool) -> tuple[float, dict | None]:
    """(RoPE theta > 0, YaRN options or None) from v4 `rope_theta` + `rope_scaling` or v5
    `rope_parameters`; a scaled RoPE other than YaRN (or YaRN where the family has none) is
    an error naming it."""
    source = next((key for key in ("rope_parameters", "rope_scaling") if hf.get(key)), None)
    rope = hf[source] if source else {}
    if not isinstance(rope, Mapping):
        raise ValueError(f"HF config {source}={rope!r}; allowed: an object or null")
    kind = rope.get("rope_type", rope.get("type", "default"))
    allowed = ("default", "yarn") if allow_yarn else ("default",)
    if kind not in allowed:
        raise ValueError(f"HF config rope type {kind!r} is not supported (allowed: "
                         f"{', '.join(map(repr, allowed))})")
    name, theta = ((f"{source}.rope_theta", rope["rope_theta"])
                   if rope.get("rope_theta") is not None else ("rope_theta", hf.get("rope_theta")))
    theta = 1e6 if theta is None else theta
    KINDS["positive"](f"HF config {name}", theta)
    if kind == "default":
        return float(theta), None
    scaling = {}
    for key, (ours, check) in _YARN.items():
        if rope.get(key) is not None:
            KINDS[check](f"HF config {source}.{key}", rope[key])
            scaling[ours] = rope[key]
    for key in ("factor", "original_max_position_embeddings"):
        if key not in scaling:
            raise ValueError(f"HF config {source} has no {key!r} (YaRN needs it)")
    return float(theta), scaling


def _rope_written(spec: DecoderSpec) -> dict:
    """config.json's RoPE keys: v4 `rope_theta` (+ `rope_scaling`), v5 `rope_parameters`."""
    scaling = spec.rope_scaling
    if scaling is None:
        return {"rope_theta": spec.rope_theta,
                "rope_parameters": {"rope_type": "default", "rope_theta": spec.rope_theta}}
    yarn = {key: getattr(scaling, ours) for key, (ours, _) in _YARN.items()
            if getattr(scaling, ours) is not None}
    return {"rope_theta": spec.rope_theta,
            "rope_parameters": {"rope_type": "yarn", "rope_theta": spec.rope_theta, **yarn},
            "rope_scaling": {"type": "yarn", "rope_type": "yarn", **yarn}}


def _check_bounds(hf: Mapping, keys: tuple[Key, ...], values: dict) -> None:
    """`BOUNDS` on {option: value read}: e.g. num_experts_per_tok <= num_local_experts."""
    source = {key.ours: key.source(hf) for key in keys}
    for low, high in BOUNDS:
        if low in values and high in values and values[low] > values[high]:
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
        raise ValueError(f"HF config is {JSON_TYPES.get(type(hf), type(hf).__name__)}, not "
                         "an object")
    check_choice("HF config model_type", hf.get("model_type"), tuple(FAMILIES))
    family = FAMILIES[hf["model_type"]]
    for key, allowed in family.unsupported.items():
        if hf.get(key, allowed) != allowed:
            raise ValueError(f"HF config {key}={hf[key]!r} is not supported (allowed: "
                             f"{allowed!r})")
    theta, scaling = _rope(hf, family.rope_scaling)
    model = {"hf_family": family.model_type, "rope_theta": theta, "rope_scaling": scaling}
    keys = (*COMMON_KEYS, *family.keys)
    values = {key.ours: key.read(hf) for key in keys}
    _check_bounds(hf, keys, values)
    for name, value in values.items():
        set_dotted(model, name, value)
    head_dim = hf.get("head_dim")  # None: hidden_size // heads, as moejax's default
    check_int("HF config head_dim", head_dim, optional=True)
    mla = family.attention == "mla"  # head_dim is then the RoPE width, written from model.mla
    model["head_dim"] = (None if mla or head_dim == model["d_model"] // model["num_heads"]
                         else head_dim)
    for name, value in family.requires.items():
        set_dotted(model, name, value)
    for layout in family.layouts:
        read, _ = LAYOUTS[layout]
        for name, value in read(hf).items():
            set_dotted(model, name, value)
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


def skipped_layers(hf: Mapping) -> int:
    """How many trailing layers config.json declares beyond `num_hidden_layers` that moejax
    skips (DeepSeek-V3's multi-token prediction modules, `num_nextn_predict_layers`)."""
    key = FAMILIES[hf["model_type"]].skipped_layers
    if key is None or hf.get(key) is None:
        return 0
    KINDS["count"](f"HF config {key}", hf[key])
    return hf[key]


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
    head_dim = spec.mla.qk_rope_head_dim if spec.mla is not None else spec.resolved_head_dim
    config = {"architectures": [family.architecture], "model_type": family.model_type,
              "head_dim": head_dim, **_rope_written(spec), **COMMON_WRITTEN, **family.written,
              "torch_dtype": torch_dtype, "dtype": torch_dtype}
    if family.skipped_layers is not None:
        config[family.skipped_layers] = 0  # moejax keeps no MTP modules
    if max_position_embeddings is not None:
        config["max_position_embeddings"] = int(max_position_embeddings)
    ids = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id,
           "pad_token_id": pad_token_id}
    config.update({key: value for key, value in ids.items() if value is not None})
    config.update({key.hf[0]: dotted(spec, key.ours) for key in (*COMMON_KEYS, *family.keys)
                   if key.write})
    for layout in family.layouts:
        _, write = LAYOUTS[layout]
        config.update(write(spec))
    return config
