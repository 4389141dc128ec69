"""NumPy float64 reference of the decoder LM, written from HF Mixtral's semantics."""

from __future__ import annotations

import numpy as np

from tests.reference import dense_swiglu_ref, moe_ref, rms_norm_ref, shared_mix_ref, softmax


def rope_ref(x, positions, theta):
    """x [S, N, H] rotated by position (HF rotate_half; frequencies repeated over halves)."""
    head_dim = x.shape[-1]
    half = head_dim // 2
    out = np.zeros_like(x, dtype=np.float64)
    for s, pos in enumerate(positions):
        for i in range(head_dim):
            freq = theta ** (-(2 * (i % half)) / head_dim)
            angle = pos * freq
            partner = -x[s, :, i + half] if i < half else x[s, :, i - half]
            out[s, :, i] = x[s, :, i] * np.cos(angle) + partner * np.sin(angle)
    return out


def attention_ref(x, w_q, w_k, w_v, w_o, theta, segments=None, qk_norm=None):
    """One sequence x [S, D]; w_q [D, N, H], w_k/w_v [D, K, H], w_o [N, H, D] -> [S, D].

    segments: [S] document ids (runs of equal ids), or None: one document. A query sees the
    earlier keys of its own document, and positions count from the document's first token.
    qk_norm: None, or (q weight [H], k weight [H]): each query and key head vector is
    RMS-normalised (eps 1e-5) and scaled by its weight before the rotation (Qwen3).
    """
    x = np.asarray(x, np.float64)
    seq, num_heads, num_kv = x.shape[0], w_q.shape[1], w_k.shape[1]
    segments = np.zeros(seq, int) if segments is None else np.asarray(segments)
    positions = np.zeros(seq, int)
    for s in range(1, seq):
        positions[s] = positions[s - 1] + 1 if segments[s] == segments[s - 1] else 0
    q, k = np.einsum("sd,dnh->snh", x, w_q), np.einsum("sd,dkh->skh", x, w_k)
    if qk_norm is not None:
        for s in range(seq):
            q[s] = [rms_norm_ref(q[s, n], qk_norm[0]) for n in range(num_heads)]
            k[s] = [rms_norm_ref(k[s, j], qk_norm[1]) for j in range(num_kv)]
    q, k = rope_ref(q, positions, theta), rope_ref(k, positions, theta)
    v = np.einsum("sd,dkh->skh", x, w_v)
    out = np.zeros((seq, num_heads, w_q.shape[2]))
    for n in range(num_heads):
        kv = n // (num_heads // num_kv)
        for s in range(seq):
            keys = [j for j in range(s + 1) if segments[j] == segments[s]]
            scores = np.array([q[s, n] @ k[j, kv] for j in keys]) / np.sqrt(q.shape[-1])
            out[s, n] = softmax(scores) @ v[keys, kv]
    return np.einsum("snh,nhd->sd", out, w_o)


def _cartesian_sub_layer_ref(sub, x, top_k, disable_top1):
    """x + (routed experts, mixed with the shared expert if any)(RMSNorm(x))."""
    u = rms_norm_ref(x, sub["norm"])
    m, info = moe_ref(u, *sub["routed"], top_k=top_k, disable_top1=disable_top1)
    if sub.get("shared") is not None:
        m = shared_mix_ref(m, dense_swiglu_ref(u, *sub["shared"]), u, sub["mix_kernel"],
                           sub["mix_bias"])
    return x + m, info


def _ffn_ref(layer_params, x_flat, spec, disable_top1):
    kind = layer_params["kind"]
    top_k = spec.moe.routed_top_k
    if kind == "cartesian":  # two sub-layers that bring their own norms and residuals
        h, info_a = _cartesian_sub_layer_ref(layer_params["sub_a"], x_flat, top_k, disable_top1)
        y, info_b = _cartesian_sub_layer_ref(layer_params["sub_b"], h, top_k, disable_top1)
        return y, [info_a, info_b]
    u = rms_norm_ref(x_flat, layer_params["ffn_norm"])
    if kind == "dense":
        return x_flat + dense_swiglu_ref(u, *layer_params["ffn"]), []
    y, info = moe_ref(u, *layer_params["routed"], top_k=top_k, disable_top1=disable_top1)
    if kind == "deepseek":
        y = y + dense_swiglu_ref(u, *layer_params["shared"])
    return x_flat + y, [info]


def decoder_ref(tokens, params, spec, disable_top1=False):
    """tokens [B, S] -> (logits [B, S, V], list of per-router oracle infos in depth order).

    params: dict with "embed" [V, D], "final_norm" [D], "head" [D, V], and "layers": a list
    of dicts with "attn_norm", "attn" (w_q, w_k, w_v, w_o), "qk_norm" (q and k weights
    [H], only with `spec.qk_norm`), "kind" ("dense", "topk",
    "deepseek" or "cartesian"), "ffn_norm" (not cartesian), "ffn" (dense weights) or
    "routed" (w_router, w_gate, w_up, w_down) and "shared" (deepseek), or "sub_a" and
    "sub_b" (cartesian: each "norm", "routed", "shared" or None, "mix_kernel", "mix_bias").
    disable_top1: every router skips each token's first choice (the robustness test).
    """
    batch, seq = tokens.shape
    x = params["embed"][tokens].astype(np.float64)  # [B, S, D]
    infos = []
    for layer in params["layers"]:
        attn = np.stack([attention_ref(rms_norm_ref(x[b], layer["attn_norm"]), *layer["attn"],
                                       spec.rope_theta, qk_norm=layer.get("qk_norm"))
                         for b in range(batch)])
        x = x + attn
        flat, layer_infos = _ffn_ref(layer, x.reshape(batch * seq, -1), spec, disable_top1)
        x = flat.reshape(batch, seq, -1)
        infos += layer_infos
    return rms_norm_ref(x, params["final_norm"]) @ params["head"], infos
