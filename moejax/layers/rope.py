"""Rotary position embeddings: plain RoPE, YaRN scaling and the two coordinate layouts.

`rope_tables` gives HF's cos/sin tables (the frequencies repeated over the two halves), with
YaRN (`RopeScaling`, docs/methods.md "YaRN") computed exactly as transformers'
`_compute_yarn_parameters`: interpolated and extrapolated frequencies blended by a linear ramp
between the correction dimensions of beta_fast and beta_slow, and cos/sin multiplied by the
attention factor. `softmax_scale` is DeepSeek's `yarn_apply_mscale`.

Two layouts rotate the same pairs of frequencies: `apply_rope` pairs coordinate i with
i + H/2 (HF Llama's "rotate half"), `apply_rope_interleaved` pairs 2i with 2i + 1 (DeepSeek;
HF `apply_rotary_pos_emb_interleave`, whose output lists the rotated even coordinates, then
the odd ones).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from moejax.layers.mla_spec import RopeScaling


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """0.1 * mscale * ln(factor) + 1 for factor > 1, else 1 (HF `get_mscale`)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_attention_factor(scaling: RopeScaling) -> float:
    """The factor on cos/sin: `attention_factor`, else mscale(s, mscale) / mscale(s,
    mscale_all_dim) when both are set (and non-zero), else mscale(s, 1)."""
    if scaling.attention_factor is not None:
        return float(scaling.attention_factor)
    if scaling.mscale and scaling.mscale_all_dim:
        return yarn_mscale(scaling.factor, scaling.mscale) / yarn_mscale(
            scaling.factor, scaling.mscale_all_dim)
    return yarn_mscale(scaling.factor)


def _correction_range(dim: int, theta: float, scaling: RopeScaling) -> tuple[float, float]:
    """HF `find_correction_range`: the ramp's bounds (in frequency index) for beta_fast and
    beta_slow rotations over the original context, rounded outwards when `truncate`."""
    def correction_dim(rotations):
        length = scaling.original_max_position_embeddings
        return dim * math.log(length / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(scaling.beta_fast), correction_dim(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dim - 1)


def yarn_inv_freq(dim: int, theta: float, scaling: RopeScaling, dtype=jnp.float32):
    """YaRN inverse frequencies [dim // 2] in `dtype` and the cos/sin attention factor (a
    float), as HF `_compute_yarn_parameters` returns them."""
    pos_freqs = theta ** (jnp.arange(0, dim, 2, dtype=dtype) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (scaling.factor * pos_freqs)
    low, high = _correction_range(dim, theta, scaling)
    if low == high:
        high += 0.001  # HF: prevents a division by zero
    ramp = jnp.clip((jnp.arange(dim // 2, dtype=dtype) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # the extrapolation's share (high-frequency coordinates keep theirs)
    inv_freq = interpolation * (1 - keep) + extrapolation * keep
    return inv_freq, yarn_attention_factor(scaling)


def softmax_scale(head_dim: int, scaling: RopeScaling | None = None) -> float:
    """head_dim ** -0.5, times mscale(s, mscale_all_dim) ** 2 when YaRN sets mscale_all_dim
    (HF DeepSeek `yarn_apply_mscale`)."""
    scale = head_dim**-0.5
    if scaling is not None and scaling.mscale_all_dim:
        scale = scale * yarn_mscale(scaling.factor, scaling.mscale_all_dim) ** 2
    return scale


def rope_tables(positions: jax.Array, head_dim: int, theta: float, dtype=jnp.float32,
                scaling: RopeScaling | None = None):
    """cos, sin tables [..., S, H] for integer positions [..., S] (HF layout: halves repeated).

    Computed in `dtype` (float32 unless a float64 test asks for more); with YaRN `scaling`
    the frequencies are YaRN's and cos/sin are multiplied by its attention factor.
    """
    factor = 1.0
    if scaling is None:
        inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=dtype) / head_dim))
    else:
        inv_freq, factor = yarn_inv_freq(head_dim, theta, scaling, dtype)
    freqs = positions.astype(dtype)[..., None] * inv_freq
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles) * factor, jnp.sin(angles) * factor


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates x [B, S, N, H] by position, pairing i with i + H/2; cos/sin: [B, S, H] (or
    broadcastable)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[..., None, :].astype(x.dtype), sin[..., None, :].astype(x.dtype)
    return x * cos + rotated * sin


def apply_rope_interleaved(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates the adjacent pairs (x0, x1), (x2, x3), ... of x [B, S, N, H] by position
    (HF `apply_rotary_pos_emb_interleave`); cos/sin: [B, S, H] tables of `rope_tables`.

    Returns [B, S, N, H] de-interleaved: the rotated even coordinates, then the odd ones.
    Dot products between two rotated vectors equal those of the pairwise complex rotation
    (DeepSeek-V2's `apply_rotary_emb`), whose output stays interleaved.
    """
    half = x.shape[-1] // 2
    cos = cos[..., None, :half].astype(x.dtype)
    sin = sin[..., None, :half].astype(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    return jnp.concatenate([even * cos - odd * sin, odd * cos + even * sin], axis=-1)
