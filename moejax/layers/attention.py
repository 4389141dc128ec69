"""Grouped-query causal self-attention with rotary embeddings, no biases (Mixtral layout).

The product itself goes through `jax.nn.dot_product_attention` (implementation "xla", or
"cudnn" for cuDNN's fused kernel on GPU). Packed documents: with segment ids a query attends
only to keys of its own segment (and, causally, earlier ones), and `positions_from_segments`
restarts RoPE positions at each document. RoPE is the "rotate half" (non-interleaved) form of
HF Llama/Mixtral. With `qk_norm` (Qwen3) each query and key head is RMS-normalised over its
H coordinates, with one learned [H] weight for queries and one for keys, before RoPE. The
projections' outputs are named ("attention_qkv", "attention_out") for
the decoder's rematerialisation policies.

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
from moejax.layers.norms import RMSNorm, rms_norm
from moejax.options import check_choice


def rope_tables(positions: jax.Array, head_dim: int, theta: float, dtype=jnp.float32):
    """cos, sin tables [..., S, H] for integer positions [..., S] (HF layout: halves repeated).

    Computed in `dtype` (float32 unless a float64 test asks for more).
    """
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=dtype) / head_dim))
    freqs = positions.astype(dtype)[..., None] * inv_freq
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates x [B, S, N, H] by position; cos/sin: [B, S, H] (or broadcastable)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[..., None, :].astype(x.dtype), sin[..., None, :].astype(x.dtype)
    return x * cos + rotated * sin


ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")


def positions_from_segments(segments: jax.Array) -> jax.Array:
    """[B, S] int positions counted from the start of each token's segment (document).

    segments: [B, S] int segment id of each token; a segment is a run of equal ids.
    """
    index = jnp.arange(segments.shape[1], dtype=jnp.int32)
    starts = jnp.concatenate([jnp.ones_like(segments[:, :1], bool),
                              segments[:, 1:] != segments[:, :-1]], axis=1)
    return index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)


def _attend(q, k, v, segments=None, implementation="xla"):
    """Causal softmax attention, q: [B, S, N, H], k/v: [B, S, K, H] -> [B, S, N, H].

    segments: [B, S] int or None; a query sees only keys of its own segment.
    `jax.nn.dot_product_attention` does its softmax in float32 on purpose; float64 inputs
    (gradient checks) take a plain einsum path instead.
    """
    same = None if segments is None else segments[:, :, None] == segments[:, None, :]
    if q.dtype != jnp.float64:
        with jax.numpy_dtype_promotion("standard"):  # jax's own code mixes float32 constants
            return jax.nn.dot_product_attention(
                q, k, v, mask=None if same is None else same[:, None], is_causal=True,
                implementation=implementation)
    batch, seq, num_heads, head_dim = q.shape
    groups = num_heads // k.shape[2]
    q = q.reshape(batch, seq, k.shape[2], groups, head_dim)
    scores = jnp.einsum("BSKGH,BTKH->BKGST", q, k) / jnp.sqrt(jnp.float64(head_dim))
    visible = jnp.tril(jnp.ones((seq, seq), bool))[None, None, None]
    if same is not None:
        visible = visible & same[:, None, None]
    weights = jax.nn.softmax(jnp.where(visible, scores, -jnp.inf), axis=-1)
    out = jnp.einsum("BKGST,BTKH->BSKGH", weights, v)
    return out.reshape(batch, seq, num_heads, head_dim)


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


def attend_cached(q, k, v, cache: KVCache, implementation="xla"):
    """Decoding: writes k/v [B, S, K, H] into the cache at slots index..index+S-1 and attends
    q [B, S, N, H] to every filled slot up to its own -> (out [B, S, N, H], updated KVCache).
    """
    cache_k = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype),
                                           (0, cache.index, 0, 0))
    cache_v = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype),
                                           (0, cache.index, 0, 0))
    query_slot = cache.index + jnp.arange(q.shape[1])
    visible = jnp.arange(cache_k.shape[1])[None, :] <= query_slot[:, None]  # [S, M]
    with jax.numpy_dtype_promotion("standard"):
        out = jax.nn.dot_product_attention(q, cache_k.astype(q.dtype), cache_v.astype(q.dtype),
                                           mask=visible[None, None],
                                           implementation=implementation)
    return out, KVCache(cache_k, cache_v, cache.index + q.shape[1])


def attention(x, w_q, w_k, w_v, w_o, positions, theta, segments=None, implementation="xla",
              cache: KVCache | None = None, qk_norm=None):
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
      qk_norm: None, or (q weight [H], k weight [H], eps): per-head RMSNorm of the queries
        and keys before RoPE (Qwen3).

    Returns:
      [B, S, D], or ([B, S, D], the updated KVCache) when a cache is given.
    """
    if cache is not None and segments is not None:
        raise ValueError("segments with a KV cache; allowed: segments=None (one document per "
                         "row when decoding)")
    q = checkpoint_name(jnp.einsum("BSD,DNH->BSNH", x, w_q), "attention_qkv")
    k = checkpoint_name(jnp.einsum("BSD,DKH->BSKH", x, w_k), "attention_qkv")
    v = checkpoint_name(jnp.einsum("BSD,DKH->BSKH", x, w_v), "attention_qkv")
    if qk_norm is not None:
        q_weight, k_weight, eps = qk_norm
        q, k = rms_norm(q, q_weight, eps), rms_norm(k, k_weight, eps)
    cos, sin = rope_tables(positions, q.shape[-1], theta, at_least_float32(x.dtype))
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if cache is not None:
        out, cache = attend_cached(q, k, v, cache, implementation)
        return jnp.einsum("BSNH,NHD->BSD", out, w_o), cache
    out = _attend(q, k, v, segments, implementation)
    return checkpoint_name(jnp.einsum("BSNH,NHD->BSD", out, w_o), "attention_out")


class Attention(nnx.Module):
    """Owns q/k/v/o projections: [D, N, H], [D, K, H], [D, K, H], [N, H, D] (float32), and
    with `qk_norm` the per-head norms q_norm, k_norm (weights [H], eps `norm_eps`)."""

    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
                 rope_theta: float, rngs: nnx.Rngs, implementation: str = "xla",
                 qk_norm: bool = False, norm_eps: float = 1e-5):
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}"
            )
        check_choice("model.attention", implementation, ATTENTION_IMPLEMENTATIONS)
        self.rope_theta = rope_theta
        self.implementation = implementation
        init_in = nnx.initializers.normal(stddev=d_model**-0.5)
        init_out = nnx.initializers.normal(stddev=(num_heads * head_dim) ** -0.5)
        f32 = jnp.float32
        self.w_q = nnx.Param(init_in(rngs.params(), (d_model, num_heads, head_dim), f32))
        self.w_k = nnx.Param(init_in(rngs.params(), (d_model, num_kv_heads, head_dim), f32))
        self.w_v = nnx.Param(init_in(rngs.params(), (d_model, num_kv_heads, head_dim), f32))
        self.w_o = nnx.Param(init_out(rngs.params(), (num_heads, head_dim, d_model), f32))
        self.q_norm = RMSNorm(head_dim, eps=norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, eps=norm_eps) if qk_norm else None

    def __call__(self, x: jax.Array, positions: jax.Array, segments: jax.Array | None = None,
                 cache: KVCache | None = None):
        """x: [B, S, D] compute dtype, positions: [B, S], segments: [B, S] or None -> [B, S, D].

        With a `cache` (this layer's KVCache, k, v [B, M, K, H]; segments None) the call
        decodes and returns ([B, S, D], the cache with this call's keys and values appended).
        """
        dtype = x.dtype
        weights = [w[...].astype(dtype) for w in (self.w_q, self.w_k, self.w_v, self.w_o)]
        qk_norm = None
        if self.q_norm is not None:
            qk_norm = (self.q_norm.weight[...], self.k_norm.weight[...], self.q_norm.eps)
        return attention(x, *weights, positions, self.rope_theta, segments,
                         self.implementation, cache, qk_norm)
