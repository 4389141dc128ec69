"""Checkpoint conversion: Hugging Face `MixtralForCausalLM` weights <-> moejax `Decoder` params.

The vanilla moejax configuration (docs/methods.md section 3: RMSNorm, RoPE "rotate half",
grouped-query attention, no biases, untied embeddings, softmax-then-top-k with renormalised
gates) is weight for weight identical to HF Mixtral (transformers v4 names). torch `Linear`
weights are [out, in]; moejax stores [in, out] with heads split out:

| HF tensor (torch layout)                               | moejax parameter                    |
|--------------------------------------------------------|-------------------------------------|
| model.embed_tokens.weight [V, D]                       | embed.embedding [V, D]              |
| model.layers.{i}.input_layernorm.weight [D]            | layers[i].attn_norm.weight [D]      |
| model.layers.{i}.self_attn.q_proj.weight [N*H, D]      | layers[i].attn.w_q [D, N, H]        |
| model.layers.{i}.self_attn.{k,v}_proj.weight [K*H, D]  | layers[i].attn.w_{k,v} [D, K, H]    |
| model.layers.{i}.self_attn.o_proj.weight [D, N*H]      | layers[i].attn.w_o [N, H, D]        |
| model.layers.{i}.post_attention_layernorm.weight [D]   | layers[i].ffn.norm.weight [D]       |
| model.layers.{i}.block_sparse_moe.gate.weight [E, D]   | layers[i].ffn.block.router.kernel   |
| ...block_sparse_moe.experts.{e}.w1.weight [F, D]       | ...block.experts.w_gate[e] [D, F]   |
| ...block_sparse_moe.experts.{e}.w3.weight [F, D]       | ...block.experts.w_up[e] [D, F]     |
| ...block_sparse_moe.experts.{e}.w2.weight [D, F]       | ...block.experts.w_down[e] [F, D]   |
| model.norm.weight [D]                                  | final_norm.weight [D]               |
| lm_head.weight [V, D]                                  | head.kernel [D, V]                  |

HF's q/k/v rows are head-major (row `n * H + h`), so `w_q = q_proj.T.reshape(D, N, H)`. Any
tensor that does not map (an unknown name, an expert index >= E, a rotary `inv_freq` buffer) or
that is missing raises ValueError listing the names: expert weights are never dropped silently.
Parameters are float32 (bfloat16 checkpoints are upcast, exactly). The table gives the unrolled
layout (`model.scan_layers=False`); a scanned model's stacks are converted with
`stack_params` / `unstack_params`.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moejax.models.decoder import Decoder, DecoderSpec, stack_params, unstack_params


def check_mixtral_spec(spec: DecoderSpec) -> None:
    """Raises ValueError naming the first option that HF Mixtral cannot express."""
    router = spec.moe.router
    required = (
        ("model.block", spec.block, "topk"),
        ("model.first_dense_layers", spec.first_dense_layers, 0),
        ("model.moe_every", spec.moe_every, 1),
        ("model.moe.num_shared_experts", spec.moe.num_shared_experts, 0),
        ("model.moe.router.kind", router.kind, "softmax_topk"),
        ("model.moe.router.normalize_gates", router.normalize_gates, True),
        ("model.moe.router.scaling_factor", router.scaling_factor, 1.0),
        ("model.moe.router.num_groups", router.num_groups, 1),
        ("model.moe.router.use_bias", router.use_bias, False),
    )
    for name, value, allowed in required:
        if value != allowed:
            raise ValueError(f"{name}={value!r} has no HF Mixtral equivalent (needs {allowed!r})")


def _expected_shapes(spec: DecoderSpec) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> torch shape for this spec."""
    d, v, h = spec.d_model, spec.vocab_size, spec.resolved_head_dim
    n, k = spec.num_heads, spec.num_kv_heads
    e, f = spec.moe.routed_experts, spec.moe.routed_d_hidden
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,),
              "lm_head.weight": (v, d)}
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (n * h, d), p + "self_attn.k_proj.weight": (k * h, d),
            p + "self_attn.v_proj.weight": (k * h, d), p + "self_attn.o_proj.weight": (d, n * h),
            p + "block_sparse_moe.gate.weight": (e, d),
        })
        for j in range(e):
            q = f"{p}block_sparse_moe.experts.{j}."
            shapes.update({q + "w1.weight": (f, d), q + "w3.weight": (f, d),
                           q + "w2.weight": (d, f)})
    return shapes


def _check_names_and_shapes(state_dict: Mapping[str, np.ndarray], spec: DecoderSpec) -> None:
    expected = _expected_shapes(spec)
    unexpected = sorted(set(state_dict) - set(expected))
    missing = sorted(set(expected) - set(state_dict))
    if unexpected or missing:
        raise ValueError(
            f"HF Mixtral state dict does not match the spec (E={spec.moe.routed_experts}, "
            f"layers={spec.num_layers}): unexpected {unexpected}, missing {missing}"
        )
    wrong = [f"{name}: {np.shape(state_dict[name])} != {shape}"
             for name, shape in expected.items() if np.shape(state_dict[name]) != shape]
    if wrong:
        raise ValueError(f"HF Mixtral tensors with the wrong shape: {wrong}")


def _layer_from_hf(sd: Mapping[str, np.ndarray], i: int, spec: DecoderSpec) -> dict:
    """Layer i's nested moejax params from the HF tensors (float32 NumPy)."""
    p = f"model.layers.{i}."
    d, h = spec.d_model, spec.resolved_head_dim

    def get(name):
        return np.asarray(sd[p + name], np.float32)

    def heads(name, count):  # [count*H, D] -> [D, count, H]
        return get(name).T.reshape(d, count, h)

    experts = [f"block_sparse_moe.experts.{j}." for j in range(spec.moe.routed_experts)]
    return {
        "attn_norm": {"weight": get("input_layernorm.weight")},
        "attn": {
            "w_q": heads("self_attn.q_proj.weight", spec.num_heads),
            "w_k": heads("self_attn.k_proj.weight", spec.num_kv_heads),
            "w_v": heads("self_attn.v_proj.weight", spec.num_kv_heads),
            "w_o": get("self_attn.o_proj.weight").T.reshape(spec.num_heads, h, d),
        },
        "ffn": {
            "norm": {"weight": get("post_attention_layernorm.weight")},
            "block": {
                "router": {"kernel": get("block_sparse_moe.gate.weight").T},
                "experts": {
                    "w_gate": np.stack([get(e + "w1.weight").T for e in experts]),
                    "w_up": np.stack([get(e + "w3.weight").T for e in experts]),
                    "w_down": np.stack([get(e + "w2.weight").T for e in experts]),
                },
            },
        },
    }


def from_hf_mixtral(state_dict: Mapping[str, np.ndarray], spec: DecoderSpec) -> nnx.State:
    """HF Mixtral tensors -> the `nnx.Param` state of `Decoder(spec)`.

    Args:
      state_dict: HF tensor name -> array in torch layout (see the module docstring), any
        float dtype; torch tensors must be converted to NumPy first.
      spec: the decoder's options; must be the vanilla Mixtral configuration.

    Returns:
      An `nnx.State` of float32 arrays with the structure of `nnx.split(Decoder(spec),
      nnx.Param)[1]`: apply it with `nnx.update(model, state)` or `nnx.merge(graphdef, state)`.

    Raises:
      ValueError: a non-Mixtral option, or unexpected / missing / wrongly shaped tensors.
    """
    check_mixtral_spec(spec)
    _check_names_and_shapes(state_dict, spec)
    pure = {
        "embed": {"embedding": np.asarray(state_dict["model.embed_tokens.weight"], np.float32)},
        "layers": {i: _layer_from_hf(state_dict, i, spec) for i in range(spec.num_layers)},
        "final_norm": {"weight": np.asarray(state_dict["model.norm.weight"], np.float32)},
        "head": {"kernel": np.asarray(state_dict["lm_head.weight"], np.float32).T},
    }
    pure = stack_params(spec, pure)  # the layout of spec.scan_layers
    abstract = nnx.eval_shape(lambda: Decoder(spec, rngs=nnx.Rngs(0)))
    state = nnx.split(abstract, nnx.Param)[1]
    expected = jax.tree.map(lambda a: (a.shape, a.dtype), nnx.to_pure_dict(state))
    got = jax.tree.map(lambda a: (a.shape, a.dtype), pure)
    assert got == expected, "internal: converted tree does not match the Decoder's params"
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
    return state


def _layer_to_hf(layer: Mapping, i: int, spec: DecoderSpec) -> dict[str, np.ndarray]:
    p = f"model.layers.{i}."
    d = spec.d_model
    attn, ffn = layer["attn"], layer["ffn"]
    block = ffn["block"]
    out = {
        p + "input_layernorm.weight": layer["attn_norm"]["weight"],
        p + "self_attn.q_proj.weight": attn["w_q"].reshape(d, -1).T,
        p + "self_attn.k_proj.weight": attn["w_k"].reshape(d, -1).T,
        p + "self_attn.v_proj.weight": attn["w_v"].reshape(d, -1).T,
        p + "self_attn.o_proj.weight": attn["w_o"].reshape(-1, d).T,
        p + "post_attention_layernorm.weight": ffn["norm"]["weight"],
        p + "block_sparse_moe.gate.weight": block["router"]["kernel"].T,
    }
    experts = block["experts"]
    for j in range(spec.moe.routed_experts):
        q = f"{p}block_sparse_moe.experts.{j}."
        out[q + "w1.weight"] = experts["w_gate"][j].T
        out[q + "w3.weight"] = experts["w_up"][j].T
        out[q + "w2.weight"] = experts["w_down"][j].T
    return out


def to_hf_mixtral(model: Decoder) -> dict[str, np.ndarray]:
    """A vanilla-Mixtral `Decoder` -> HF tensor name -> contiguous float32 array (torch layout).

    Raises:
      ValueError: the model's spec is not the vanilla Mixtral configuration.
    """
    spec = model.spec
    check_mixtral_spec(spec)
    pure = jax.tree.map(lambda a: np.asarray(a, np.float32),
                        unstack_params(spec, nnx.to_pure_dict(nnx.split(model, nnx.Param)[1])))
    out = {"model.embed_tokens.weight": pure["embed"]["embedding"]}
    for i in range(spec.num_layers):
        out.update(_layer_to_hf(pure["layers"][i], i, spec))
    out["model.norm.weight"] = pure["final_norm"]["weight"]
    out["lm_head.weight"] = pure["head"]["kernel"].T
    return {name: np.ascontiguousarray(value) for name, value in out.items()}
