"""NumPy float64 reference of the decoder LM, written from HF Mixtral's semantics."""

from __future__ import annotations

import math

import numpy as np

from tests.reference import dense_swiglu_ref, moe_ref, rms_norm_ref, shared_mix_ref, softmax


def positions_ref(segments):
    """[S] positions counted from the start of each run of equal segment ids."""
    positions = np.zeros(len(segments), int)
    for s in range(1, len(segments)):
        positions[s] = positions[s - 1] + 1 if segments[s] == segments[s - 1] else 0
    return positions


def yarn_mscale_ref(factor, mscale=1.0):
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_ref(dim, theta, scaling):
    """YaRN (arXiv 2309.00071, HF conventions): (inv_freq [dim/2] float64, cos/sin factor).

    Frequency i blends theta^(-2i/dim) (extrapolation) and the same divided by the factor s
    (interpolation) by a ramp from 0 at the dimension where the original context makes
    beta_fast rotations to 1 where it makes beta_slow (bounds rounded outwards with
    `truncate`).
    """
    def dim_of(rotations):
        wavelength = scaling.original_max_position_embeddings / (rotations * 2 * math.pi)
        return dim * math.log(wavelength) / (2 * math.log(theta))

    low, high = dim_of(scaling.beta_fast), dim_of(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    inv_freq = np.zeros(dim // 2)
    for i in range(dim // 2):
        base = theta ** (-(2 * i) / dim)
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)  # 1: fully interpolated
        inv_freq[i] = base / scaling.factor * ramp + base * (1 - ramp)
    if scaling.attention_factor is not None:
        factor = scaling.attention_factor
    elif scaling.mscale and scaling.mscale_all_dim:
        factor = (yarn_mscale_ref(scaling.factor, scaling.mscale)
                  / yarn_mscale_ref(scaling.factor, scaling.mscale_all_dim))
    else:
        factor = yarn_mscale_ref(scaling.factor)
    return inv_freq, factor


def softmax_scale_ref(head_dim, scaling=None):
    """1/sqrt(head_dim), times mscale(s, mscale_all_dim)^2 when YaRN sets mscale_all_dim."""
    scale = 1 / math.sqrt(head_dim)
    if scaling is not None and scaling.mscale_all_dim:
        scale *= yarn_mscale_ref(scaling.factor, scaling.mscale_all_dim) ** 2
    return scale


def rope_ref(x, positions, theta, scaling=None, interleave=False):
    """x [S, N, H] rotated by position: coordinate pairs (i, i + H/2) (HF rotate_half), or
    (2i, 2i + 1) with `interleave` (DeepSeek's complex pairs; the output stays interleaved),
    each by angle pos * inv_freq[i]; YaRN `scaling` changes the frequencies and multiplies
    by its attention factor."""
    head_dim = x.shape[-1]
    half = head_dim // 2
    inv_freq, factor = (yarn_ref(head_dim, theta, scaling) if scaling is not None else
                        ([theta ** (-(2 * i) / head_dim) for i in range(half)], 1.0))
    out = np.zeros_like(x, dtype=np.float64)
    for s, pos in enumerate(positions):
        for i in range(half):
            a, b = (2 * i, 2 * i + 1) if interleave else (i, i + half)
            c, n = np.cos(pos * inv_freq[i]) * factor, np.sin(pos * inv_freq[i]) * factor
            out[s, :, a] = x[s, :, a] * c - x[s, :, b] * n
            out[s, :, b] = x[s, :, b] * c + x[s, :, a] * n
    return out


def _causal_attention_ref(q, k, v, segments, scale):
    """q [S, N, H], k [S, N, H], v [S, N, Hv] (heads already matched) -> [S, N, Hv]."""
    seq, num_heads = q.shape[:2]
    out = np.zeros((seq, num_heads, v.shape[-1]))
    for n in range(num_heads):
        for s in range(seq):
            keys = [j for j in range(s + 1) if segments[j] == segments[s]]
            scores = np.array([q[s, n] @ k[j, n] for j in keys]) * scale
            out[s, n] = softmax(scores) @ v[keys, n]
    return out


def attention_ref(x, w_q, w_k, w_v, w_o, theta, segments=None, qk_norm=None, *, bias=None,
                  qk_norm_axes="head", clip=None, scaling=None, eps=1e-5):
    """One sequence x [S, D]; w_q [D, N, H], w_k/w_v [D, K, H], w_o [N, H, D] -> [S, D].

    segments: [S] document ids (runs of equal ids), or None: one document. A query sees the
    earlier keys of its own document, and positions count from the document's first token.
    bias: None or (b_q [N, H], b_k [K, H], b_v [K, H]) added to the projections (Qwen2-MoE).
    qk_norm: None, or (q weight, k weight): RMSNorm (eps `eps`) before the rotation, of each
    query and key head (weights [H], Qwen3) or, with qk_norm_axes "all", of the whole query
    [N*H] and key [K*H] projection (OLMoE).
    clip: None or c: q, k (after their norms) and v clamped to [-c, c] (OLMoE).
    scaling: None or a RopeScaling (YaRN): its frequencies, cos/sin factor and softmax scale.
    """
    x = np.asarray(x, np.float64)
    seq, num_heads, num_kv = x.shape[0], w_q.shape[1], w_k.shape[1]
    segments = np.zeros(seq, int) if segments is None else np.asarray(segments)
    q, k = np.einsum("sd,dnh->snh", x, w_q), np.einsum("sd,dkh->skh", x, w_k)
    v = np.einsum("sd,dkh->skh", x, w_v)
    if bias is not None:
        q, k, v = q + bias[0], k + bias[1], v + bias[2]
    if qk_norm is not None:
        for s in range(seq):
            if qk_norm_axes == "all":
                q[s] = rms_norm_ref(q[s].reshape(-1), qk_norm[0], eps).reshape(q[s].shape)
                k[s] = rms_norm_ref(k[s].reshape(-1), qk_norm[1], eps).reshape(k[s].shape)
            else:
                q[s] = [rms_norm_ref(q[s, n], qk_norm[0], eps) for n in range(num_heads)]
                k[s] = [rms_norm_ref(k[s, j], qk_norm[1], eps) for j in range(num_kv)]
    if clip is not None:
        q, k, v = (np.minimum(np.maximum(t, -clip), clip) for t in (q, k, v))
    positions = positions_ref(segments)
    q, k = rope_ref(q, positions, theta, scaling), rope_ref(k, positions, theta, scaling)
    group = [n // (num_heads // num_kv) for n in range(num_heads)]
    out = _causal_attention_ref(q, k[:, group], v[:, group], segments,
                                softmax_scale_ref(q.shape[-1], scaling))
    return np.einsum("snh,nhd->sd", out, w_o)


MLA_LATENT_EPS = 1e-6  # HF DeepSeek-V2/V3's q_a_layernorm / kv_a_layernorm (class default)


def mla_ref(x, p, mla, theta, scaling=None, segments=None):
    """Multi-head Latent Attention (DeepSeek-V2/V3) of one sequence x [S, D] -> [S, D].

    p: dict of float64 weights: "w_q" [D, N, Q], or "w_q_a" [D, A], "q_a_norm" [A],
    "w_q_b" [A, N, Q]; "w_kv_a" [D, C + R], "kv_a_norm" [C], "w_kv_b" [C, N, P + V],
    "w_o" [N, V, D]. Per head the query is [q_nope, rope(q_rope)] and the key
    [latent W_kv_b's key part, rope(the shared R columns of x W_kv_a)]; the values are
    latent W_kv_b's value part; latent = RMSNorm(the first C columns of x W_kv_a).
    """
    x = np.asarray(x, np.float64)
    seq, nope, rank = x.shape[0], mla.qk_nope_head_dim, mla.kv_lora_rank
    segments = np.zeros(seq, int) if segments is None else np.asarray(segments)
    if "w_q" in p:
        q = np.einsum("sd,dnq->snq", x, p["w_q"])
    else:
        low = np.stack([rms_norm_ref(row, p["q_a_norm"], MLA_LATENT_EPS)
                        for row in x @ p["w_q_a"]])
        q = np.einsum("sa,anq->snq", low, p["w_q_b"])
    compressed = x @ p["w_kv_a"]
    latent = np.stack([rms_norm_ref(row[:rank], p["kv_a_norm"], MLA_LATENT_EPS)
                       for row in compressed])
    kv = np.einsum("sc,cnf->snf", latent, p["w_kv_b"])
    positions = positions_ref(segments)
    q_rope = rope_ref(q[:, :, nope:], positions, theta, scaling, mla.rope_interleave)
    k_rope = rope_ref(compressed[:, None, rank:], positions, theta, scaling,
                      mla.rope_interleave)
    q = np.concatenate([q[:, :, :nope], q_rope], axis=-1)
    k = np.concatenate([kv[:, :, :nope], np.repeat(k_rope, q.shape[1], axis=1)], axis=-1)
    out = _causal_attention_ref(q, k, kv[:, :, nope:], segments,
                                softmax_scale_ref(mla.qk_head_dim, scaling))
    return np.einsum("snv,nvd->sd", out, p["w_o"])


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
    if kind == "deepseek":  # optional "mix_kernel" (and "mix_bias"): see shared_mix_ref
        y = shared_mix_ref(y, dense_swiglu_ref(u, *layer_params["shared"]), u,
                           layer_params.get("mix_kernel"), layer_params.get("mix_bias"))
    return x_flat + y, [info]


def _attention_layer_ref(x, layer, spec):
    """One sequence x [S, D] through a layer's attention: MLA with layer["mla"], else GQA with
    the spec's options."""
    if "mla" in layer:
        return mla_ref(x, layer["mla"], spec.mla, spec.rope_theta, spec.rope_scaling)
    return attention_ref(x, *layer["attn"], spec.rope_theta, qk_norm=layer.get("qk_norm"),
                         bias=layer.get("qkv_bias"), qk_norm_axes=spec.qk_norm_axes,
                         clip=spec.clip_qkv, scaling=spec.rope_scaling, eps=spec.norm_eps)


def decoder_ref(tokens, params, spec, disable_top1=False):
    """tokens [B, S] -> (logits [B, S, V], list of per-router oracle infos in depth order).

    params: dict with "embed" [V, D], "final_norm" [D], "head" [D, V], and "layers": a list
    of dicts with "attn_norm", "attn" (w_q, w_k, w_v, w_o), "qk_norm" (q and k weights
    [H], or [N*H] and [K*H] with qk_norm_axes "all", only with `spec.qk_norm`), "qkv_bias"
    ((b_q, b_k, b_v), only with `spec.qkv_bias`), or instead of "attn" "mla" (`mla_ref`'s
    weight dict, with `spec.mla`), "kind" ("dense", "topk",
    "deepseek" or "cartesian"), "ffn_norm" (not cartesian), "ffn" (dense weights) or
    "routed" (w_router, w_gate, w_up, w_down) and "shared" (deepseek; with "mix_kernel"
    [D, 1] its output is gated by sigmoid(u mix_kernel), shared_mix="sigmoid"), or "sub_a" and
    "sub_b" (cartesian: each "norm", "routed", "shared" or None, "mix_kernel", "mix_bias").
    disable_top1: every router skips each token's first choice (the robustness test).
    """
    batch, seq = tokens.shape
    x = params["embed"][tokens].astype(np.float64)  # [B, S, D]
    infos = []
    for layer in params["layers"]:
        attn = np.stack([_attention_layer_ref(rms_norm_ref(x[b], layer["attn_norm"]), layer,
                                              spec) for b in range(batch)])
        x = x + attn
        flat, layer_infos = _ffn_ref(layer, x.reshape(batch * seq, -1), spec, disable_top1)
        x = flat.reshape(batch, seq, -1)
        infos += layer_infos
    return rms_norm_ref(x, params["final_norm"]) @ params["head"], infos
