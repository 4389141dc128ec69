"""Grouped-query causal self-attention with rotary embeddings (Mixtral layout and variants).

The product itself goes through `jax.nn.dot_product_attention` (implementation "xla", or
"cudnn" for cuDNN's fused kernel on GPU). Packed documents: with segment ids a query attends
only to keys of its own segment (and, causally, earlier ones), and `positions_from_segments`
restarts RoPE positions at each document. RoPE is the "rotate half" (non-interleaved) form of
HF Llama/Mixtral (`moejax.layers.rope`), optionally YaRN-scaled (`rope_scaling`, which also
sets the softmax scale, `rope.softmax_scale`). Variants, each as its HF family computes it:
- `qk_norm` with `qk_norm_axes="head"` (Qwen3): each query and key head is RMS-normalised
  over its H coordinates, one learned [H] weight for queries and one for keys, before RoPE;
  with "all" (OLMoE): the whole query projection [N*H] and key projection [K*H] are
  normalised, weights [N*H] and [K*H];
- `qkv_bias` (Qwen2-MoE): the q, k, v projections add biases [N, H], [K, H], [K, H];
- `clip_qkv=c` (OLMoE): queries and keys (after their norms) and values are clamped to
  [-c, c] before RoPE.
The projections' outputs are named ("attention_qkv", "attention_out") for the decoder's
rematerialisation policies.

Decoding passes a `KVCache` (keys and values of M slots and the first free slot) into the call
and gets it back updated: `attend_cached(q, k, v, cache)` appends this call's keys and values
and attends to every filled slot. The cache is an argument, never state of the module.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from moejax.layers.dtypes import at_least_float32
from moejax.layers.mla_spec import RopeScaling
from moejax.layers.norms import RMSNorm, rms_norm
from moejax.layers.rope import apply_rope, rope_tables, softmax_scale
from moejax.options import check_choice, check_range

ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")
QK_NORM_AXES = ("head", "all")  # what one query/key norm covers: a head, or all heads


def positions_from_segments(segments: jax.Array) -> jax.Array:
    """[B, S] int positions counted from the start of each token's segment (document).

    segments: [B, S] int segment id of each token; a segment is a run of equal ids.
    """
    index = jnp.arange(segments.shape[1], dtype=jnp.int32)
    starts = jnp.concatenate([jnp.ones_like(segments[:, :1], bool),
                              segments[:, 1:] != segments[:, :-1]], axis=1)
    return index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)


def _pad_last(x: jax.Array, width: int) -> jax.Array:
    """x [..., W] zero-padded on the last axis to [..., width] (width >= W)."""
    if width == x.shape[-1]:
        return x
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])])


def _attend(q, k, v, segments=None, implementation="xla", scale=None):
    """Causal softmax attention, q: [B, S, N, H], k: [B, S, K, H], v: [B, S, K, Hv]
    -> [B, S, N, Hv] (Hv may differ from H: MLA).

    segments: [B, S] int or None; a query sees only keys of its own segment.
    scale: the scores' factor (None: H ** -0.5).
    `jax.nn.dot_product_attention` does its softmax in float32 on purpose (it needs one head
    width: the narrower of q/k and v is zero-padded, which changes neither the scores nor the
    kept output columns); float64 inputs (gradient checks) take a plain einsum path instead.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    same = None if segments is None else segments[:, :, None] == segments[:, None, :]
    out_width = v.shape[-1]
    if q.dtype != jnp.float64:
        width = max(q.shape[-1], out_width)
        q, k, v = (_pad_last(t, width) for t in (q, k, v))
        with jax.numpy_dtype_promotion("standard"):  # jax's own code mixes float32 constants
            out = jax.nn.dot_product_attention(
                q, k, v, mask=None if same is None else same[:, None], scale=scale,
                is_causal=True, implementation=implementation)
        return out[..., :out_width]
    batch, seq, num_heads, head_dim = q.shape
    groups = num_heads // k.shape[2]
    q = q.reshape(batch, seq, k.shape[2], groups, head_dim)
    scores = jnp.einsum("BSKGH,BTKH->BKGST", q, k) * scale
    visible = jnp.tril(jnp.ones((seq, seq), bool))[None, None, None]
    if same is not None:
        visible = visible & same[:, None, None]
    weights = jax.nn.softmax(jnp.where(visible, scores, -jnp.inf), axis=-1)
    out = jnp.einsum("BKGST,BTKH->BSKGH", weights, v)
    return out.reshape(batch, seq, num_heads, out_width)


class KVCache(NamedTuple):
    """One attention layer's decode cache (a pytree).

    A scanned layer stack carries one KVCache per layer of its unit, each leaf with a leading
    [repeats] axis (k, v [L, B, M, K, H], index [L]), stacked like the parameters.

    Attributes:
      k: [B, M, K, H] keys of M slots, in the cache dtype.
      v: [B, M, K, H] values.
      index: [] int32, the first free slot (slots 0..index-1 are filled).
    """

    k: jax.Array
    v: jax.Array
    index: jax.Array


def empty_kv_cache(batch: int, length: int, num_kv_heads: int, head_dim: int, dtype,
                   lead: tuple[int, ...] = ()) -> KVCache:
    """An empty KVCache of `length` slots: k, v [*lead, B, length, K, H] zeros in `dtype`,
    index [*lead] int32 zeros (`lead`: (repeats,) for a scanned stack, else ())."""
    shape = (*lead, batch, length, num_kv_heads, head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros(lead, jnp.int32))


def attend_cached(q, k, v, cache: KVCache, implementation="xla", scale=None):
    """Decoding: writes k/v [B, S, K, H] into the cache at slots index..index+S-1 and attends
    q [B, S, N, H] to every filled slot up to its own -> (out [B, S, N, H], updated KVCache).

    scale: the scores' factor (None: H ** -0.5).
    """
    cache_k = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype),
                                           (0, cache.index, 0, 0))
    cache_v = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype),
                                           (0, cache.index, 0, 0))
    query_slot = cache.index + jnp.arange(q.shape[1])
    visible = jnp.arange(cache_k.shape[1])[None, :] <= query_slot[:, None]  # [S, M]
    with jax.numpy_dtype_promotion("standard"):
        out = jax.nn.dot_product_attention(q, cache_k.astype(q.dtype), cache_v.astype(q.dtype),
                                           mask=visible[None, None], scale=scale,
                                           implementation=implementation)
    return out, KVCache(cache_k, cache_v, cache.index + q.shape[1])


def _norm_qk(q, k, q_weight, k_weight, eps, axes):
    """RMS-normalises q [B, S, N, H] and k [B, S, K, H] per head (axes "head": weights [H])
    or over all their heads at once (axes "all": weights [N*H], [K*H])."""
    if axes == "head":
        return rms_norm(q, q_weight, eps), rms_norm(k, k_weight, eps)
    return (rms_norm(q.reshape(*q.shape[:2], -1), q_weight, eps).reshape(q.shape),
            rms_norm(k.reshape(*k.shape[:2], -1), k_weight, eps).reshape(k.shape))


def project_qkv(x, w_q, w_k, w_v, *, bias=None, qk_norm=None, qk_norm_axes="head",
                clip_qkv=None):
    """x [B, S, D] -> q [B, S, N, H], k, v [B, S, K, H], before RoPE.

    bias: None or (b_q [N, H], b_k [K, H], b_v [K, H]); qk_norm: None or (q weight, k weight,
    eps) over `qk_norm_axes` ("head" or "all"); clip_qkv: None or c, clamping q, k (after
    their norms) and v to [-c, c].
    """
    q = jnp.einsum("BSD,DNH->BSNH", x, w_q)
    k = jnp.einsum("BSD,DKH->BSKH", x, w_k)
    v = jnp.einsum("BSD,DKH->BSKH", x, w_v)
    if bias is not None:
        q, k, v = q + bias[0], k + bias[1], v + bias[2]
    q, k, v = (checkpoint_name(t, "attention_qkv") for t in (q, k, v))
    if qk_norm is not None:
        q, k = _norm_qk(q, k, *qk_norm, qk_norm_axes)
    if clip_qkv is not None:
        q, k, v = (jnp.clip(t, -clip_qkv, clip_qkv) for t in (q, k, v))
    return q, k, v


def attention(x, w_q, w_k, w_v, w_o, positions, theta, segments=None, implementation="xla",
              cache: KVCache | None = None, qk_norm=None, *, qk_norm_axes="head", bias=None,
              clip_qkv=None, rope_scaling: RopeScaling | None = None):
    """Causal GQA self-attention.

    Args:
      x: [B, S, D] activations.
      w_q: [D, N, H]; w_k, w_v: [D, K, H] with N a multiple of K; w_o: [N, H, D].
      positions: [B, S] int token positions.
      theta: RoPE base.
      segments: [B, S] int segment (packed document) ids, or None: one segment per row.
      implementation: `jax.nn.dot_product_attention`'s, one of ATTENTION_IMPLEMENTATIONS.
      cache: None, or a KVCache (k, v [B, M, K, H]; segments must be None): the call
        appends its keys and values and the queries attend to the cached ones too.
      qk_norm: None, or (q weight, k weight, eps): RMSNorm of the queries and keys before
        RoPE, per head (weights [H], Qwen3) or over all heads (weights [N*H], [K*H], OLMoE)
        as `qk_norm_axes` ("head" or "all") says.
      bias: None, or (b_q [N, H], b_k [K, H], b_v [K, H]) added to the projections.
      clip_qkv: None, or c: q, k (after their norms) and v clamped to [-c, c].
      rope_scaling: None, or YaRN (`RopeScaling`): its RoPE tables and softmax scale.

    Returns:
      [B, S, D], or ([B, S, D], the updated KVCache) when a cache is given.
    """
    if cache is not None and segments is not None:
        raise ValueError("segments with a KV cache; allowed: segments=None (one document per "
                         "row when decoding)")
    q, k, v = project_qkv(x, w_q, w_k, w_v, bias=bias, qk_norm=qk_norm,
                          qk_norm_axes=qk_norm_axes, clip_qkv=clip_qkv)
    cos, sin = rope_tables(positions, q.shape[-1], theta, at_least_float32(x.dtype),
                           rope_scaling)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    scale = softmax_scale(q.shape[-1], rope_scaling)
    if cache is not None:
        out, cache = attend_cached(q, k, v, cache, implementation, scale)
        return jnp.einsum("BSNH,NHD->BSD", out, w_o), cache
    out = _attend(q, k, v, segments, implementation, scale)
    return checkpoint_name(jnp.einsum("BSNH,NHD->BSD", out, w_o), "attention_out")


def check_rope_scaling(rope_scaling) -> None:
    """Raises ValueError unless `rope_scaling` is None or a `RopeScaling`."""
    if rope_scaling is not None and not isinstance(rope_scaling, RopeScaling):
        raise ValueError(f"model.rope_scaling={rope_scaling!r}; allowed: None or a "
                         "RopeScaling (YaRN)")


class Attention(nnx.Module):
    """Owns q/k/v/o projections w_q [D, N, H], w_k, w_v [D, K, H], w_o [N, H, D]; with
    `qkv_bias` the biases b_q [N, H], b_k, b_v [K, H] (zeros); with `qk_norm` the norms
    q_norm, k_norm (eps `norm_eps`; weights [H] for qk_norm_axes "head", [N*H] and [K*H] for
    "all"). Every Param is created float32."""

    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
                 rope_theta: float, rngs: nnx.Rngs, implementation: str = "xla",
                 qk_norm: bool = False, norm_eps: float = 1e-5, qk_norm_axes: str = "head",
                 qkv_bias: bool = False, clip_qkv: float | None = None,
                 rope_scaling: RopeScaling | None = None):
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}"
            )
        check_choice("model.attention", implementation, ATTENTION_IMPLEMENTATIONS)
        check_choice("model.qk_norm_axes", qk_norm_axes, QK_NORM_AXES)
        if clip_qkv is not None:
            check_range("model.clip_qkv", clip_qkv, 0.0, low_open=True)
        check_rope_scaling(rope_scaling)
        self.rope_theta, self.rope_scaling = rope_theta, rope_scaling
        self.implementation, self.qk_norm_axes, self.clip_qkv = (implementation, qk_norm_axes,
                                                                 clip_qkv)
        init_in = nnx.initializers.normal(stddev=d_model**-0.5)
        init_out = nnx.initializers.normal(stddev=(num_heads * head_dim) ** -0.5)
        f32 = jnp.float32
        self.w_q = nnx.Param(init_in(rngs.params(), (d_model, num_heads, head_dim), f32))
        self.w_k = nnx.Param(init_in(rngs.params(), (d_model, num_kv_heads, head_dim), f32))
        self.w_v = nnx.Param(init_in(rngs.params(), (d_model, num_kv_heads, head_dim), f32))
        self.w_o = nnx.Param(init_out(rngs.params(), (num_heads, head_dim, d_model), f32))
        self.b_q = nnx.Param(jnp.zeros((num_heads, head_dim), f32)) if qkv_bias else None
        self.b_k = nnx.Param(jnp.zeros((num_kv_heads, head_dim), f32)) if qkv_bias else None
        self.b_v = nnx.Param(jnp.zeros((num_kv_heads, head_dim), f32)) if qkv_bias else None
        wide = qk_norm_axes == "all"
        self.q_norm = (RMSNorm(head_dim * (num_heads if wide else 1), eps=norm_eps)
                       if qk_norm else None)
        self.k_norm = (RMSNorm(head_dim * (num_kv_heads if wide else 1), eps=norm_eps)
                       if qk_norm else None)

    def __call__(self, x: jax.Array, positions: jax.Array, segments: jax.Array | None = None,
                 cache: KVCache | None = None):
        """x: [B, S, D] compute dtype, positions: [B, S], segments: [B, S] or None -> [B, S, D].

        With a `cache` (this layer's KVCache, k, v [B, M, K, H]; segments None) the call
        decodes and returns ([B, S, D], the cache with this call's keys and values appended).
        """
        dtype = x.dtype
        weights = [w[...].astype(dtype) for w in (self.w_q, self.w_k, self.w_v, self.w_o)]
        bias = None
        if self.b_q is not None:
            bias = tuple(b[...].astype(dtype) for b in (self.b_q, self.b_k, self.b_v))
        qk_norm = None
        if self.q_norm is not None:
            qk_norm = (self.q_norm.weight[...], self.k_norm.weight[...], self.q_norm.eps)
        return attention(x, *weights, positions, self.rope_theta, segments,
                         self.implementation, cache, qk_norm, qk_norm_axes=self.qk_norm_axes,
                         bias=bias, clip_qkv=self.clip_qkv, rope_scaling=self.rope_scaling)
