"""moejax/models/convert_hf.py: HF Mixtral tensors <-> Decoder params (Qwen3-MoE: the
transformers fixtures of test_hf_dir.py).

The model loaded from a random HF-layout state dict must compute what a NumPy forward written
directly in HF's torch layout computes (`x @ W.T`, `view(S, N, H)`, `rotate_half`, `repeat_kv`,
`block_sparse_moe` with softmax -> top-k -> renormalise). That forward is written here from HF's
`modeling_mixtral.py`, independently of the converter and of tests/reference_decoder.py.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from moejax.models.convert_hf import from_hf, to_hf
from moejax.models.decoder import Decoder
from moejax.models.weights import load_params
from moejax.moe.router import RouterSpec
from moejax.moe.spec import MoESpec
from tests.models.hf_helpers import SPEC, D, E, H, K, N, hf_state_dict

B, S = 2, 7


def _rms(x, w, eps=1e-5):
    return w * x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _hf_attention(x, sd, p, theta):
    """x: [B, S, D] -> [B, S, D], HF MixtralAttention (eager path) with torch-layout weights."""
    w = {n: np.asarray(sd[f"{p}self_attn.{n}_proj.weight"], np.float64) for n in "qkvo"}
    q = (x @ w["q"].T).reshape(B, S, N, H).transpose(0, 2, 1, 3)  # [B, N, S, H]
    k = (x @ w["k"].T).reshape(B, S, K, H).transpose(0, 2, 1, 3)
    v = (x @ w["v"].T).reshape(B, S, K, H).transpose(0, 2, 1, 3)
    inv_freq = 1.0 / theta ** (np.arange(0, H, 2) / H)
    freqs = np.arange(S)[:, None] * inv_freq[None]
    emb = np.concatenate([freqs, freqs], -1)  # [S, H]
    q = q * np.cos(emb) + _rotate_half(q) * np.sin(emb)
    k = k * np.cos(emb) + _rotate_half(k) * np.sin(emb)
    k, v = np.repeat(k, N // K, axis=1), np.repeat(v, N // K, axis=1)  # repeat_kv
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(H)
    scores = np.where(np.tril(np.ones((S, S), bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = (probs @ v).transpose(0, 2, 1, 3).reshape(B, S, N * H)
    return out @ w["o"].T


def _hf_sparse_moe(x, sd, p, top_k):
    """x: [T, D] -> [T, D]: HF MixtralSparseMoeBlock (softmax, top-k, renormalise, SwiGLU)."""
    gate = np.asarray(sd[p + "block_sparse_moe.gate.weight"], np.float64)
    logits = x @ gate.T
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        chosen = np.argsort(-probs[t], kind="stable")[:top_k]
        weights = probs[t, chosen] / probs[t, chosen].sum()
        for weight, e in zip(weights, chosen, strict=True):
            q = f"{p}block_sparse_moe.experts.{e}."
            w1, w2, w3 = (np.asarray(sd[q + n + ".weight"], np.float64) for n in ("w1", "w2", "w3"))
            out[t] += weight * ((_silu(x[t] @ w1.T) * (x[t] @ w3.T)) @ w2.T)
    return out


def _hf_forward(tokens, sd, spec):
    """MixtralForCausalLM logits [B, S, V] in float64 from torch-layout tensors."""
    f64 = {name: np.asarray(a, np.float64) for name, a in sd.items()}
    x = f64["model.embed_tokens.weight"][tokens]
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        x = x + _hf_attention(_rms(x, f64[p + "input_layernorm.weight"]), sd, p, spec.rope_theta)
        u = _rms(x, f64[p + "post_attention_layernorm.weight"]).reshape(B * S, -1)
        x = x + _hf_sparse_moe(u, sd, p, spec.moe.top_k).reshape(B, S, -1)
    return _rms(x, f64["model.norm.weight"]) @ f64["lm_head.weight"].T


def _loaded_model(sd, spec=SPEC):
    model = nnx.eval_shape(lambda: Decoder(spec, rngs=nnx.Rngs(0)))
    nnx.update(model, from_hf(sd, spec))
    return model


@pytest.mark.parametrize("scan_layers", [False, True])
def test_from_hf_logits_match_a_forward_in_hf_layout(scan_layers):
    sd = hf_state_dict()
    spec = dataclasses.replace(SPEC, scan_layers=scan_layers)
    model = _loaded_model(sd, spec)
    tokens = np.random.default_rng(1).integers(0, SPEC.vocab_size, size=(B, S))
    logits, record = nnx.jit(lambda m, t: m(t))(model, jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(logits, np.float64), _hf_forward(tokens, sd, SPEC),
                               rtol=1e-4, atol=1e-4)
    assert record.num_routers == SPEC.num_layers


def test_from_hf_gives_the_decoders_params_in_float32_or_the_stored_dtype():
    """The converted dict has the Decoder's parameter tree; float32 by default (what the
    model holds), the tensors' own bfloat16 with dtype=None (import), loaded exactly."""
    model = nnx.eval_shape(lambda: Decoder(SPEC, rngs=nnx.Rngs(0)))
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype),
                          nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    params = from_hf(hf_state_dict(), SPEC)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == shapes
    halves = {k: v.astype(ml_dtypes.bfloat16) for k, v in hf_state_dict().items()}
    kept = from_hf(halves, dataclasses.replace(SPEC, scan_layers=True), dtype=None)
    assert {a.dtype for a in jax.tree.leaves(kept)} == {np.dtype(ml_dtypes.bfloat16)}
    model = Decoder(dataclasses.replace(SPEC, scan_layers=True), rngs=nnx.Rngs(0))
    load_params(model, kept)  # upcast into the model's float32, either layout
    w_o = model.stacks[0].layers[0].attn.w_o[...]
    assert w_o.dtype == jnp.float32
    np.testing.assert_array_equal(
        w_o[1], halves["model.layers.1.self_attn.o_proj.weight"].astype(np.float32).T
        .reshape(N, H, D))


def test_q_proj_rows_are_head_major():
    """Row n*H + h of q_proj is head n, coordinate h of moejax's w_q [D, N, H]."""
    sd = hf_state_dict()
    w_q = np.asarray(from_hf(sd, SPEC)["layers"][0]["attn"]["w_q"])
    q_proj = sd["model.layers.0.self_attn.q_proj.weight"]
    for n, h in ((0, 0), (1, 2), (5, 3)):
        np.testing.assert_array_equal(w_q[:, n, h], q_proj[n * H + h])


@pytest.mark.parametrize("scan_layers", [False, True])
def test_round_trip_is_exact(scan_layers):
    sd = hf_state_dict(seed=2)
    out = to_hf(_loaded_model(sd, dataclasses.replace(SPEC, scan_layers=scan_layers)))
    assert sorted(out) == sorted(sd)
    for name, value in sd.items():
        assert out[name].dtype == np.float32 and out[name].flags.c_contiguous, name
        np.testing.assert_array_equal(out[name], value, err_msg=name)


def test_bfloat16_checkpoint_is_upcast_exactly():
    sd = {name: jnp.asarray(a, jnp.bfloat16) for name, a in hf_state_dict(seed=3).items()}
    sd = {name: np.asarray(a) for name, a in sd.items()}  # ml_dtypes bfloat16 arrays
    out = to_hf(_loaded_model(sd))
    for name, value in sd.items():
        np.testing.assert_array_equal(out[name], value.astype(np.float32), err_msg=name)


def test_extra_expert_raises():
    sd = hf_state_dict(num_experts=E + 1)  # one expert more than the spec's E
    with pytest.raises(ValueError, match=r"unexpected \[.*experts\.5\.w1\.weight"):
        from_hf(sd, SPEC)


def test_missing_expert_tensor_raises():
    sd = hf_state_dict()
    del sd["model.layers.1.block_sparse_moe.experts.3.w3.weight"]
    with pytest.raises(ValueError, match=r"missing \['model\.layers\.1\.block_sparse_moe\."
                                         r"experts\.3\.w3\.weight'\]"):
        from_hf(sd, SPEC)


def test_extra_key_raises():
    sd = hf_state_dict()
    sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(H // 2, np.float32)
    with pytest.raises(ValueError, match=r"rotary_emb\.inv_freq"):
        from_hf(sd, SPEC)


def test_wrong_shape_raises():
    sd = hf_state_dict()
    sd["model.layers.0.self_attn.k_proj.weight"] = np.zeros((N * H, D), np.float32)
    with pytest.raises(ValueError, match=r"k_proj\.weight: \(24, 12\) != \(8, 12\)"):
        from_hf(sd, SPEC)


@pytest.mark.parametrize("change, match", [
    (dict(block="deepseek", moe=MoESpec(num_experts=5, top_k=2, d_hidden=8,
                                        num_shared_experts=1)), r"model\.block='deepseek'"),
    (dict(first_dense_layers=1), r"model\.first_dense_layers=1"),
    (dict(moe_every=2), r"model\.moe_every=2"),
    (dict(moe=MoESpec(num_experts=5, top_k=2, d_hidden=8, router=RouterSpec(kind="sigmoid"))),
     r"model\.moe\.router\.kind='sigmoid'"),
    (dict(moe=MoESpec(num_experts=5, top_k=2, d_hidden=8,
                      router=RouterSpec(normalize_gates=False))),
     r"model\.moe\.router\.normalize_gates=False"),
])
def test_non_mixtral_options_raise(change, match):
    spec = dataclasses.replace(SPEC, **change)
    with pytest.raises(ValueError, match=match):
        from_hf(hf_state_dict(), spec)
    model = nnx.eval_shape(lambda: Decoder(spec, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=match):
        to_hf(model)

