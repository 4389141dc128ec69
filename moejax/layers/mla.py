"""Multi-head Latent Attention (DeepSeek-V2/V3), as HF `DeepseekV3Attention` computes it.

Shapes: D model width, N heads, P = qk_nope_head_dim, R = qk_rope_head_dim, Q = P + R,
V = v_head_dim, C = kv_lora_rank, A = q_lora_rank (docs/methods.md, "Multi-head Latent
Attention"):

    q      = x W_q                      or  RMSNorm(x W_q_a) W_q_b          # [N, Q]
    [c, r] = x W_kv_a;  c = RMSNorm(c)                                  # [C], [R]
    [k_nope, v] = c W_kv_b                                              # [N, P], [N, V]
    q_n = [q[:P], rope(q[P:])],  k_n = [k_nope_n, rope(r)]   (one RoPE key for all heads)
    out = softmax(q_n . k_n * scale) v_n, then W_o

RoPE rotates the R coordinates interleaved (`MLASpec.rope_interleave`, DeepSeek's pairs) or
half-split; with YaRN (`RopeScaling`) both the tables and the softmax scale
(`rope.softmax_scale(Q, scaling)`) change. The two latent RMSNorms use eps 1e-6 whatever
`norm_eps` is, as transformers builds them (`DeepseekV3RMSNorm(rank)`, default eps, for
q_a_layernorm and kv_a_layernorm; `norm_eps` is HF's rms_norm_eps of the decoder's own norms).
No attention biases (HF `attention_bias=False`, every DeepSeek checkpoint).

Decoding keeps only the normalised latent c [C] and the rotated RoPE key [R] per token
(`MLACache`) and attends in the absorbed form: queries are projected into the latent space
with W_kv_b's key part, the softmax weights average latents, and W_kv_b's value part then W_o
map the result back. The cache is an argument, never state of the module.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from moejax.layers.attention import ATTENTION_IMPLEMENTATIONS, _attend, check_rope_scaling
from moejax.layers.dtypes import at_least_float32
from moejax.layers.mla_spec import MLASpec, RopeScaling
from moejax.layers.norms import RMSNorm, rms_norm
from moejax.layers.rope import apply_rope, apply_rope_interleaved, rope_tables, softmax_scale
from moejax.options import check_choice

LATENT_NORM_EPS = 1e-6  # HF DeepseekV2/V3RMSNorm's default, used by q_a/kv_a_layernorm


class MLACache(NamedTuple):
    """One MLA layer's decode cache (a pytree); a scanned stack adds a leading [repeats] axis
    to every leaf, like `KVCache`.

    Attributes:
      latent: [B, M, C] the normalised key/value latent of M slots, in the cache dtype.
      k_rope: [B, M, R] the shared RoPE key, already rotated.
      index: [] int32, the first free slot.
    """

    latent: jax.Array
    k_rope: jax.Array
    index: jax.Array


def empty_mla_cache(batch: int, length: int, mla: MLASpec, dtype,
                    lead: tuple[int, ...] = ()) -> MLACache:
    """An empty MLACache of `length` slots: latent [*lead, B, length, C] and k_rope
    [*lead, B, length, R] zeros in `dtype`, index [*lead] int32 zeros."""
    return MLACache(jnp.zeros((*lead, batch, length, mla.kv_lora_rank), dtype),
                    jnp.zeros((*lead, batch, length, mla.qk_rope_head_dim), dtype),
                    jnp.zeros(lead, jnp.int32))


class MLAWeights(NamedTuple):
    """One layer's MLA weights in the compute dtype (norm weights as stored).

    w_q [D, N, Q] without a query LoRA, else None and w_q_a [D, A], q_a_norm [A],
    w_q_b [A, N, Q]; w_kv_a [D, C + R]; kv_a_norm [C]; w_kv_b [C, N, P + V]; w_o [N, V, D].
    """

    w_q: jax.Array | None
    w_q_a: jax.Array | None
    q_a_norm: jax.Array | None
    w_q_b: jax.Array | None
    w_kv_a: jax.Array
    kv_a_norm: jax.Array
    w_kv_b: jax.Array
    w_o: jax.Array


def mla_queries(x: jax.Array, w: MLAWeights) -> jax.Array:
    """x [B, S, D] -> queries [B, S, N, Q] (before RoPE)."""
    if w.w_q is not None:
        q = jnp.einsum("BSD,DNQ->BSNQ", x, w.w_q)
    else:
        low = rms_norm(jnp.einsum("BSD,DA->BSA", x, w.w_q_a), w.q_a_norm, LATENT_NORM_EPS)
        q = jnp.einsum("BSA,ANQ->BSNQ", low, w.w_q_b)
    return checkpoint_name(q, "attention_qkv")


def mla_latent(x: jax.Array, w: MLAWeights, mla: MLASpec):
    """x [B, S, D] -> (normalised latent c [B, S, C], RoPE key [B, S, R] before RoPE)."""
    compressed = checkpoint_name(jnp.einsum("BSD,DF->BSF", x, w.w_kv_a), "attention_qkv")
    latent, k_rope = jnp.split(compressed, [mla.kv_lora_rank], axis=-1)
    return rms_norm(latent, w.kv_a_norm, LATENT_NORM_EPS), k_rope


def _rotate(x, cos, sin, interleave: bool):
    """x [B, S, N, R] rotated by the RoPE tables cos/sin [B, S, R]."""
    return (apply_rope_interleaved if interleave else apply_rope)(x, cos, sin)


def _attend_expanded(q, latent, k_rope, w_kv_b, mla: MLASpec, scale, segments,
                     implementation):
    """Training/scoring: q [B, S, N, Q] (rotated), latent [B, S, C], k_rope [B, S, R]
    (rotated) -> [B, S, N, V], keys and values expanded per head from the latent."""
    kv = checkpoint_name(jnp.einsum("BSC,CNF->BSNF", latent, w_kv_b), "attention_qkv")
    k_nope, v = jnp.split(kv, [mla.qk_nope_head_dim], axis=-1)
    shared = jnp.broadcast_to(k_rope[:, :, None, :], (*k_nope.shape[:3], k_rope.shape[-1]))
    k = jnp.concatenate([k_nope, shared], axis=-1)
    return _attend(q, k, v, segments, implementation, scale)


def _attend_absorbed(q_nope, q_rope, cache: MLACache, w_kv_b, mla: MLASpec, scale):
    """Decoding against the filled slots of `cache` (this call's S tokens already written at
    index - S .. index - 1): q_nope [B, S, N, P], q_rope [B, S, N, R] (rotated)
    -> [B, S, N, V], reading only the latent cache."""
    dtype = q_nope.dtype
    w_uk, w_uv = jnp.split(w_kv_b, [mla.qk_nope_head_dim], axis=-1)  # [C, N, P], [C, N, V]
    latent, k_rope = cache.latent.astype(dtype), cache.k_rope.astype(dtype)
    q_latent = jnp.einsum("BSNP,CNP->BSNC", q_nope, w_uk)
    wide = at_least_float32(dtype)  # scores accumulate and softmax in float32 (or float64)
    scores = (jnp.einsum("BSNC,BMC->BNSM", q_latent, latent, preferred_element_type=wide)
              + jnp.einsum("BSNR,BMR->BNSM", q_rope, k_rope, preferred_element_type=wide))
    query_slot = cache.index - q_nope.shape[1] + jnp.arange(q_nope.shape[1])
    visible = jnp.arange(latent.shape[1])[None, :] <= query_slot[:, None]  # [S, M]
    scores = jnp.where(visible, scores * scale, -jnp.inf)
    weights = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out_latent = jnp.einsum("BNSM,BMC->BSNC", weights, latent)
    return jnp.einsum("BSNC,CNV->BSNV", out_latent, w_uv)


def _write(cache: MLACache, latent, k_rope) -> MLACache:
    """cache with latent [B, S, C] and rotated k_rope [B, S, R] at slots index..index+S-1."""
    at = (0, cache.index, 0)
    return MLACache(
        jax.lax.dynamic_update_slice(cache.latent, latent.astype(cache.latent.dtype), at),
        jax.lax.dynamic_update_slice(cache.k_rope, k_rope.astype(cache.k_rope.dtype), at),
        cache.index + latent.shape[1])


def mla_attention(x, w: MLAWeights, positions, mla: MLASpec, theta: float,
                  rope_scaling: RopeScaling | None = None, segments=None,
                  implementation: str = "xla", cache: MLACache | None = None):
    """Causal Multi-head Latent Attention.

    Args:
      x: [B, S, D] activations; w: the layer's MLAWeights in x's dtype.
      positions: [B, S] int token positions; theta: RoPE base; rope_scaling: None or YaRN.
      segments: [B, S] int packed-document ids, or None: one document per row.
      implementation: `jax.nn.dot_product_attention`'s, one of ATTENTION_IMPLEMENTATIONS
        (the uncached path; decoding is a plain einsum).
      cache: None, or an MLACache (latent [B, M, C], k_rope [B, M, R]; segments must be
        None): the call appends its latents and attends in the absorbed form.

    Returns:
      [B, S, D], or ([B, S, D], the updated MLACache) when a cache is given.
    """
    if cache is not None and segments is not None:
        raise ValueError("segments with an MLA cache; allowed: segments=None (one document "
                         "per row when decoding)")
    q = mla_queries(x, w)
    latent, k_rope = mla_latent(x, w, mla)
    cos, sin = rope_tables(positions, mla.qk_rope_head_dim, theta, at_least_float32(x.dtype),
                           rope_scaling)
    q_nope, q_rope = jnp.split(q, [mla.qk_nope_head_dim], axis=-1)
    q_rope = _rotate(q_rope, cos, sin, mla.rope_interleave)
    k_rope = _rotate(k_rope[:, :, None, :], cos, sin, mla.rope_interleave)[:, :, 0]
    scale = softmax_scale(mla.qk_head_dim, rope_scaling)
    if cache is not None:
        cache = _write(cache, latent, k_rope)
        out = _attend_absorbed(q_nope, q_rope, cache, w.w_kv_b, mla, scale)
        return jnp.einsum("BSNV,NVD->BSD", out, w.w_o), cache
    out = _attend_expanded(jnp.concatenate([q_nope, q_rope], axis=-1), latent, k_rope,
                           w.w_kv_b, mla, scale, segments, implementation)
    return checkpoint_name(jnp.einsum("BSNV,NVD->BSD", out, w.w_o), "attention_out")


class MLAttention(nnx.Module):
    """Owns, all float32: w_q [D, N, Q] (q_lora_rank None) or w_q_a [D, A], q_a_norm (RMSNorm,
    weight [A]), w_q_b [A, N, Q]; w_kv_a [D, C + R] (the last R columns: the shared RoPE
    key); kv_a_norm (RMSNorm, weight [C]); w_kv_b [C, N, P + V] (per head the key's P
    coordinates, then the value's V); w_o [N, V, D]. Both RMSNorms use eps 1e-6 (HF's)."""

    def __init__(self, d_model: int, num_heads: int, mla: MLASpec, *, rope_theta: float,
                 rope_scaling: RopeScaling | None, norm_eps: float, rngs: nnx.Rngs,
                 implementation: str = "xla"):
        if not isinstance(mla, MLASpec):
            raise ValueError(f"model.mla={mla!r}; allowed: an MLASpec")
        check_choice("model.attention", implementation, ATTENTION_IMPLEMENTATIONS)
        check_rope_scaling(rope_scaling)
        self.mla, self.rope_theta, self.rope_scaling = mla, rope_theta, rope_scaling
        self.implementation, self.norm_eps = implementation, norm_eps
        heads, f32 = num_heads, jnp.float32
        q_dim, rank = mla.qk_head_dim, mla.kv_lora_rank

        def param(shape, fan_in):
            return nnx.Param(nnx.initializers.normal(stddev=fan_in**-0.5)(
                rngs.params(), shape, f32))

        lora = mla.q_lora_rank
        self.w_q = param((d_model, heads, q_dim), d_model) if lora is None else None
        self.w_q_a = None if lora is None else param((d_model, lora), d_model)
        self.q_a_norm = None if lora is None else RMSNorm(lora, eps=LATENT_NORM_EPS)
        self.w_q_b = None if lora is None else param((lora, heads, q_dim), lora)
        self.w_kv_a = param((d_model, rank + mla.qk_rope_head_dim), d_model)
        self.kv_a_norm = RMSNorm(rank, eps=LATENT_NORM_EPS)
        self.w_kv_b = param((rank, heads, mla.qk_nope_head_dim + mla.v_head_dim), rank)
        self.w_o = param((heads, mla.v_head_dim, d_model), heads * mla.v_head_dim)

    def weights(self, dtype) -> MLAWeights:
        """The layer's MLAWeights, projections cast to `dtype`."""
        w_q, w_q_a, w_q_b, w_kv_a, w_kv_b, w_o = (
            None if p is None else p[...].astype(dtype)
            for p in (self.w_q, self.w_q_a, self.w_q_b, self.w_kv_a, self.w_kv_b, self.w_o))
        q_a_norm = None if self.q_a_norm is None else self.q_a_norm.weight[...]
        return MLAWeights(w_q, w_q_a, q_a_norm, w_q_b, w_kv_a, self.kv_a_norm.weight[...],
                          w_kv_b, w_o)

    def __call__(self, x: jax.Array, positions: jax.Array, segments: jax.Array | None = None,
                 cache: MLACache | None = None):
        """x: [B, S, D] compute dtype, positions: [B, S], segments: [B, S] or None -> [B, S, D].

        With a `cache` (this layer's MLACache; segments None) the call decodes and returns
        ([B, S, D], the cache with this call's latents and RoPE keys appended).
        """
        return mla_attention(x, self.weights(x.dtype), positions, self.mla, self.rope_theta,
                             self.rope_scaling, segments, self.implementation, cache)
