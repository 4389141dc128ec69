"""Hugging Face model families as records: what a `model_type` means in moejax's options.

A family record holds everything the reader (`hf_config.spec_from_hf_config`), the writer
(`hf_config.hf_config_from_spec`) and the tensor table (`hf_tensors.LAYER_TENSORS`) need:

- `keys`: moejax option <-> config.json key (the HF default when the key is absent or null;
  aliases that are read too; the `KINDS` row its value must satisfy);
- `requires`: moejax options the family fixes: set when reading, checked when writing (an
  option the family cannot express is an error naming it);
- `layouts`: options read and written by a function of the whole config rather than one
  key (`LAYOUTS` keys: Qwen's dense layers, DeepSeek-V2's `topk_method`);
- `attention`: "gqa" or "mla" (model.mla must be set exactly for "mla");
- `shared`, `shared_gate`: the shared experts' module names (DeepSeek `shared_experts`,
  Qwen2-MoE `shared_expert` with its sigmoid gate `shared_expert_gate`);
- `rope_scaling`: YaRN allowed; `skipped_layers`: the config key counting trailing layers
  that an import skips with a warning naming them (DeepSeek-V3's multi-token prediction);
- `unsupported`: config.json keys moejax cannot honour unless they hold the allowed value;
- `written`: constant keys an export writes besides `COMMON_WRITTEN`;
- `moe`, `experts`: the names of an MoE layer's module and of an expert's gate, up and down
  projections (the tensor table's `{moe}`, `{gate}`, `{up}`, `{down}`).

config.json is untrusted input: every value read is checked against its key's kind (an
integer >= 1 for a size, a finite number > 0, a bool, ...; `KINDS`) and `BOUNDS` (top-k at
most the experts), each error one line naming the key and the value ("HF config
num_experts_per_tok=2.5; allowed: an integer >= 1").

A model is read as the family its config.json's `model_type` names and written as the family
its spec names (`DecoderSpec.hf_family`); the family is never inferred from other options.
Adding a family: a record in FAMILIES, any moejax option it needs, and fixtures written by
transformers (tests/fixtures/make_hf_fixtures.py).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping
from types import MappingProxyType

from moejax.options import check_choice, check_int, check_range

_REQUIRED = object()


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r}; allowed: true or false")


def _check_ids(name: str, value) -> None:
    """A token id (an integer >= 0) or a non-empty list of them (eos), or None."""
    if isinstance(value, list) and value:
        for item in value:
            check_int(f"{name} item", item, 0)
    elif not isinstance(value, list):
        check_int(name, value, 0, optional=True)
    else:
        raise ValueError(f"{name}=[]; allowed: a token id, a non-empty list of them, or null")


# Key.kind -> check(name, value): what a config.json value must be (one-line ValueErrors
# naming the key and the value, `moejax.options`'s wording)
KINDS = MappingProxyType({
    "size": check_int,  # an integer >= 1 (not a bool, a float or a string)
    "count": lambda name, value: check_int(name, value, 0),  # an integer >= 0
    "positive": lambda name, value: check_range(name, value, 0.0, low_open=True),
    "nonnegative": lambda name, value: check_range(name, value, 0.0),
    "fraction": lambda name, value: check_range(name, value, 0.0, 1.0, high_open=True),
    "bool": _check_bool,
    "id": lambda name, value: check_int(name, value, 0, optional=True),
    "ids": _check_ids,
})


@dataclasses.dataclass(frozen=True)
class Key:
    """One moejax option <-> one config.json key.

    Attributes:
      ours: the dotted moejax option under `model`, e.g. "moe.d_hidden".
      hf: the config.json key written, then aliases also read (first present wins).
      default: the value when config.json lacks the key (or holds null): a constant, or a
        function of the config dict; absent: the key is required.
      cast: applied to the value read (e.g. bool, float); None keeps it.
      write: False: read only (another option writes the same config key).
      kind: what a value in config.json must be, a `KINDS` key (checked before `cast`).
    """

    ours: str
    hf: tuple[str, ...]
    default: object = _REQUIRED
    cast: Callable | None = None
    write: bool = True
    kind: str = "size"

    def source(self, hf: Mapping) -> str:
        """The config.json key the value is read from (the first alias present)."""
        return next((k for k in self.hf if hf.get(k) is not None), self.hf[0])

    def read(self, hf: Mapping):
        """The moejax value of this key in the config dict `hf`.

        Raises:
          ValueError: the key is required and absent, or its value is not of its kind.
        """
        name = self.source(hf)
        value = hf.get(name)
        if value is None:
            if self.default is _REQUIRED:
                raise ValueError(f"HF config has no {self.hf[0]!r} (moejax's model.{self.ours})")
            value = self.default(hf) if callable(self.default) else self.default
        else:
            KINDS[self.kind](f"HF config {name}", value)
        return value if self.cast is None or value is None else self.cast(value)


@dataclasses.dataclass(frozen=True)
class HFFamily:
    """How one HF model family names its config and tensors (see the module docstring)."""

    model_type: str  # config.json "model_type"
    architecture: str  # config.json "architectures"[0]
    title: str  # in messages
    moe: str  # an MoE layer's module
    experts: tuple[str, str, str]  # an expert's gate, up and down projections
    keys: tuple[Key, ...]
    requires: Mapping[str, object]
    unsupported: Mapping[str, object]
    written: Mapping[str, object]
    layouts: tuple[str, ...] = ()  # `LAYOUTS` keys: options read and written by a function
    attention: str = "gqa"  # "gqa" (model.mla None) or "mla" (model.mla set)
    shared: str | None = None  # the shared experts' module under {moe}
    shared_gate: str | None = None  # the shared experts' sigmoid gate under {moe}
    rope_scaling: bool = False  # YaRN rope_scaling / rope_parameters allowed
    # a config key counting extra trailing layers that are skipped on import (MTP modules)
    skipped_layers: str | None = None


# Keys every family has (beyond these: head_dim and the RoPE keys, written by hf_dir).
COMMON_KEYS = (
    Key("vocab_size", ("vocab_size",)),
    Key("d_model", ("hidden_size",)),
    Key("num_layers", ("num_hidden_layers",)),
    Key("num_heads", ("num_attention_heads",)),
    Key("num_kv_heads", ("num_key_value_heads",), default=lambda hf: hf["num_attention_heads"]),
    Key("moe.top_k", ("num_experts_per_tok",)),
)
# (smaller, larger): moejax options whose config.json values must be ordered so
BOUNDS = (("moe.top_k", "moe.num_experts"), ("num_kv_heads", "num_heads"),
          ("first_dense_layers", "num_layers"), ("moe.router.top_groups", "moe.router.num_groups"))
COMMON_UNSUPPORTED = MappingProxyType(
    {"tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False})
COMMON_WRITTEN = MappingProxyType({
    "hidden_act": "silu", "tie_word_embeddings": False, "attention_bias": False,
    "attention_dropout": 0.0, "output_router_logits": False, "max_position_embeddings": 32768})
# the routed top-k block of Mixtral and Qwen3-MoE: softmax, then top-k, no shared experts
TOPK_SOFTMAX = MappingProxyType({
    "block": "topk", "moe.granularity": 1, "moe.num_shared_experts": 0,
    "moe.router.kind": "softmax_topk", "moe.router.scaling_factor": 1.0,
    "moe.router.num_groups": 1, "moe.router.use_bias": False})

_EPS = {"1e-5": Key("norm_eps", ("rms_norm_eps",), default=1e-5, kind="positive"),
        "1e-6": Key("norm_eps", ("rms_norm_eps",), default=1e-6, kind="positive")}
_DENSE_FFN = Key("d_ff", ("intermediate_size",))
_EXPERT_WIDTH = Key("moe.d_hidden", ("moe_intermediate_size",))
_NORM_TOPK = Key("moe.router.normalize_gates", ("norm_topk_prob",), default=False, cast=bool,
                 kind="bool")
_QWEN_EXPERTS = Key("moe.num_experts", ("num_experts", "num_local_experts"))
_GQA_PLAIN = MappingProxyType({"qk_norm": False, "qkv_bias": False, "clip_qkv": None})
# DeepSeek-V2/V3: MLA, routed + shared experts, leading dense layers
_MLA_KEYS = (
    _DENSE_FFN, _EXPERT_WIDTH, _EPS["1e-6"],
    Key("moe.num_experts", ("n_routed_experts", "num_local_experts", "num_experts")),
    Key("moe.num_shared_experts", ("n_shared_experts",), kind="count"),
    Key("first_dense_layers", ("first_k_dense_replace",), default=0, kind="count"),
    Key("mla.kv_lora_rank", ("kv_lora_rank",)),
    Key("mla.q_lora_rank", ("q_lora_rank",), default=None),
    Key("mla.qk_nope_head_dim", ("qk_nope_head_dim",)),
    Key("mla.qk_rope_head_dim", ("qk_rope_head_dim",)),
    Key("mla.v_head_dim", ("v_head_dim",)))
_MLA_REQUIRES = MappingProxyType({
    **_GQA_PLAIN, "block": "deepseek", "moe_every": 1, "moe.granularity": 1,
    "moe.shared_d_hidden": None, "moe.shared_mix": "sum"})
_MLA_UNSUPPORTED = MappingProxyType({**COMMON_UNSUPPORTED, "moe_layer_freq": 1,
                                     "mlp_bias": False})

FAMILIES = MappingProxyType({
    "mixtral": HFFamily(
        model_type="mixtral", architecture="MixtralForCausalLM", title="HF Mixtral",
        moe="block_sparse_moe", experts=("w1", "w3", "w2"),
        keys=(Key("d_ff", ("intermediate_size",), write=False),
              Key("moe.d_hidden", ("intermediate_size",)),
              Key("moe.num_experts", ("num_local_experts",)),
              Key("moe.router.jitter", ("router_jitter_noise",), default=0.0, cast=float,
                  kind="fraction"),
              _EPS["1e-5"]),
        # every layer MoE, gates renormalised over the top-k
        requires={**TOPK_SOFTMAX, **_GQA_PLAIN, "first_dense_layers": 0, "moe_every": 1,
                  "moe.router.normalize_gates": True},
        unsupported={**COMMON_UNSUPPORTED, "sliding_window": None},
        written={"sliding_window": None}),
    "qwen3_moe": HFFamily(
        model_type="qwen3_moe", architecture="Qwen3MoeForCausalLM", title="HF Qwen3-MoE",
        moe="mlp", experts=("gate_proj", "up_proj", "down_proj"),
        # the hub's configs say num_experts; transformers 5 writes num_local_experts
        keys=(_DENSE_FFN, _EXPERT_WIDTH, _QWEN_EXPERTS, _NORM_TOPK, _EPS["1e-6"]),
        requires={**TOPK_SOFTMAX, **_GQA_PLAIN, "qk_norm": True,  # per-head q/k RMSNorm
                  "qk_norm_axes": "head"},
        layouts=("sparse_step",),
        unsupported={**COMMON_UNSUPPORTED, "use_sliding_window": False},
        written={"use_sliding_window": False, "sliding_window": None}),
    "olmoe": HFFamily(
        model_type="olmoe", architecture="OlmoeForCausalLM", title="HF OLMoE",
        moe="mlp", experts=("gate_proj", "up_proj", "down_proj"),
        keys=(Key("d_ff", ("intermediate_size",), write=False),
              Key("moe.d_hidden", ("intermediate_size",)), _QWEN_EXPERTS, _NORM_TOPK,
              Key("clip_qkv", ("clip_qkv",), default=None, cast=float, kind="positive"),
              _EPS["1e-5"]),
        # q/k RMSNorm over the whole projection, every layer MoE
        requires={**TOPK_SOFTMAX, "qk_norm": True, "qk_norm_axes": "all", "qkv_bias": False,
                  "first_dense_layers": 0, "moe_every": 1},
        unsupported=COMMON_UNSUPPORTED, written={}),
    "qwen2_moe": HFFamily(
        model_type="qwen2_moe", architecture="Qwen2MoeForCausalLM", title="HF Qwen2-MoE",
        moe="mlp", experts=("gate_proj", "up_proj", "down_proj"),
        keys=(_DENSE_FFN, _EXPERT_WIDTH, _QWEN_EXPERTS, _NORM_TOPK, _EPS["1e-6"],
              Key("moe.shared_d_hidden", ("shared_expert_intermediate_size",)),
              Key("qkv_bias", ("qkv_bias",), default=True, cast=bool, kind="bool")),
        # one shared expert mixed by a sigmoid gate; q/k/v biases
        requires={**TOPK_SOFTMAX, "block": "deepseek", "moe.num_shared_experts": 1,
                  "moe.shared_mix": "sigmoid", "qk_norm": False, "clip_qkv": None},
        layouts=("sparse_step",), shared="shared_expert", shared_gate="shared_expert_gate",
        unsupported={**COMMON_UNSUPPORTED, "use_sliding_window": False},
        written={"use_sliding_window": False, "sliding_window": None}),
    "deepseek_v2": HFFamily(
        model_type="deepseek_v2", architecture="DeepseekV2ForCausalLM", title="HF DeepSeek-V2",
        moe="mlp", experts=("gate_proj", "up_proj", "down_proj"),
        keys=(*_MLA_KEYS, Key("moe.router.scaling_factor", ("routed_scaling_factor",),
                              default=1.0, cast=float, kind="positive")),
        # softmax scores, gates not renormalised (transformers ignores norm_topk_prob);
        # RoPE on adjacent pairs (complex multiplication)
        requires={**_MLA_REQUIRES, "moe.router.kind": "softmax_topk",
                  "moe.router.use_bias": False, "moe.router.normalize_gates": False,
                  "mla.rope_interleave": True},
        layouts=("topk_method",), attention="mla", shared="shared_experts", rope_scaling=True,
        unsupported={**_MLA_UNSUPPORTED, "norm_topk_prob": False, "scoring_func": "softmax"},
        written={}),
    "deepseek_v3": HFFamily(
        model_type="deepseek_v3", architecture="DeepseekV3ForCausalLM", title="HF DeepSeek-V3",
        moe="mlp", experts=("gate_proj", "up_proj", "down_proj"),
        keys=(*_MLA_KEYS,
              Key("moe.router.scaling_factor", ("routed_scaling_factor",), default=2.5,
                  cast=float, kind="positive"),
              Key("moe.router.normalize_gates", ("norm_topk_prob",), default=True, cast=bool,
                  kind="bool"),
              Key("moe.router.num_groups", ("n_group",), default=8),
              Key("moe.router.top_groups", ("topk_group",), default=4),
              Key("mla.rope_interleave", ("rope_interleave",), default=True, cast=bool,
                  kind="bool")),
        # sigmoid scores with the selection-only e_score_correction_bias, group-limited
        requires={**_MLA_REQUIRES, "moe.router.kind": "sigmoid", "moe.router.use_bias": True,
                  "moe.router.group_score": "top2_sum"},
        attention="mla", shared="shared_experts", rope_scaling=True,
        skipped_layers="num_nextn_predict_layers",
        unsupported={**_MLA_UNSUPPORTED, "scoring_func": "sigmoid", "topk_method": "noaux_tc"},
        written={}),
})


def dotted(spec, name: str):
    """`spec`'s option `name` ("moe.router.kind" -> spec.moe.router.kind)."""
    for part in name.split("."):
        spec = getattr(spec, part)
    return spec


def set_dotted(tree: dict, name: str, value) -> None:
    """tree["a"]["b"] = value for name "a.b" (nested dicts made as needed)."""
    *parents, last = name.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def family_of(spec) -> HFFamily:
    """The HF family `spec.hf_family` names, after checking that it can express `spec`.

    Raises:
      ValueError: naming the first option that family cannot express.
    """
    family = FAMILIES[spec.hf_family]
    if (spec.mla is not None) != (family.attention == "mla"):
        raise ValueError(f"model.mla={spec.mla!r} has no {family.title} equivalent (needs "
                         f"{'an MLASpec' if family.attention == 'mla' else 'None'}; "
                         f"model.hf_family={spec.hf_family!r})")
    for name, allowed in family.requires.items():
        if dotted(spec, name) != allowed:
            raise ValueError(f"model.{name}={dotted(spec, name)!r} has no {family.title} "
                             f"equivalent (needs {allowed!r}; model.hf_family="
                             f"{spec.hf_family!r})")
    return family


def _sparse_step_read(hf: Mapping) -> dict:
    """Qwen's MoE layers (not in `mlp_only_layers`, `(i + 1) % decoder_sparse_step == 0`) as
    moejax's first_dense_layers and moe_every. Works in time linear in `mlp_only_layers`:
    never a list as long as `num_hidden_layers` (which a config may set to anything)."""
    layers, step = hf["num_hidden_layers"], hf.get("decoder_sparse_step")
    check_int("HF config decoder_sparse_step", step, optional=True)
    _check_layer_list("mlp_only_layers", hf.get("mlp_only_layers"), layers)
    step, dense = step or 1, set(hf.get("mlp_only_layers") or ())
    candidates = range(step - 1, layers, step)
    moe = (i for i in candidates if i not in dense)
    first, second = next(moe, None), next(moe, None)  # at most len(dense) + 2 candidates
    if first is None:
        return {"first_dense_layers": layers, "moe_every": 1}
    every = second - first if second is not None else (step if first + step >= layers
                                                       else layers)
    wanted = range(first, layers, every)  # a subset of candidates: MoE iff no dense one,
    dense_candidates = {i for i in dense if i in candidates}  # and the others all dense
    if (any(i in wanted for i in dense)
            or len(dense_candidates) != len(candidates) - len(wanted)):
        shown = list(itertools.islice((i for i in candidates if i not in dense), 13))
        raise ValueError(
            f"HF config mlp_only_layers={sorted(dense)} with decoder_sparse_step={step} puts "
            f"MoE layers at {shown[:12]}{'...' if len(shown) > 12 else ''}; moejax needs them "
            "at first_dense_layers + k * moe_every up to the last layer")
    return {"first_dense_layers": first, "moe_every": every}


def _check_layer_list(key: str, listed, layers: int) -> None:
    """config.json's `key` must be null or a list of layer indices in [0, layers)."""
    if listed is None:
        return
    if not isinstance(listed, list):
        raise ValueError(f"HF config {key}={listed!r}; allowed: a list of layer indices")
    for i in listed:
        check_int(f"HF config {key} item", i, 0, layers - 1)


def _sparse_step_write(spec) -> dict:
    """Qwen's own pattern when it fits, else every dense layer listed."""
    step = spec.moe_every
    moe_layers = [i for i in range(spec.num_layers) if spec.is_moe_layer(i)]
    if any((i + 1) % step for i in moe_layers):
        step = 1
    return {"decoder_sparse_step": step,
            "mlp_only_layers": [i for i in range(spec.num_layers)
                                if (i + 1) % step == 0 and not spec.is_moe_layer(i)]}


def _topk_method_read(hf: Mapping) -> dict:
    """DeepSeek-V2's `topk_method`: "greedy" (no groups) or "group_limited_greedy" (the best
    `topk_group` of `n_group` groups, a group scored by its best expert)."""
    method = hf.get("topk_method") or "greedy"
    check_choice("HF config topk_method", method, ("greedy", "group_limited_greedy"))
    if method == "greedy":
        return {"moe.router.num_groups": 1, "moe.router.top_groups": 1}
    groups = {name: hf.get(key) for name, key in (("num_groups", "n_group"),
                                                   ("top_groups", "topk_group"))}
    for name, key in (("num_groups", "n_group"), ("top_groups", "topk_group")):
        check_int(f"HF config {key}", groups[name])
    return {"moe.router.num_groups": groups["num_groups"],
            "moe.router.top_groups": groups["top_groups"], "moe.router.group_score": "max"}


def _topk_method_write(spec) -> dict:
    router = spec.moe.router
    if router.num_groups == 1:
        return {"topk_method": "greedy", "n_group": 1, "topk_group": 1}
    if router.group_score != "max":
        raise ValueError(f"model.moe.router.group_score={router.group_score!r} has no HF "
                         "DeepSeek-V2 equivalent (needs 'max' with num_groups > 1)")
    return {"topk_method": "group_limited_greedy", "n_group": router.num_groups,
            "topk_group": router.top_groups}


# LAYOUTS[name] = (read(config dict) -> {dotted moejax option: value},
#                  write(spec) -> {config key: value})
LAYOUTS = MappingProxyType({"sparse_step": (_sparse_step_read, _sparse_step_write),
                            "topk_method": (_topk_method_read, _topk_method_write)})
