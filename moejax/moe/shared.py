"""Shared experts: always-on SwiGLU experts joined to the routed output.

S shared experts are stored as one SwiGLU of width S * shared_d_hidden (exactly their sum,
HF DeepSeek's `shared_experts` layout). How they join the routed output is a row of
`combine.SHARED_MIXES`: `shared_mix="sum"` adds them (DeepSeekMoE); `"softmax"` mixes with a
learned 2-way gate `c = softmax(u W_c + b_c)`: `c0 * routed + c1 * shared` (CartesianMoE);
`"sigmoid"` gates them with `sigmoid(u w_c)`: `routed + sigmoid(u w_c) * shared` (Qwen2-MoE's
`shared_expert_gate`, no bias). The gate's weights start at zero (c = 1/2 each, or a gate of
1/2); its math runs in float32 or wider.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.layers.dtypes import at_least_float32
from moejax.layers.ffn import SwiGLU
from moejax.moe.combine import SHARED_MIXES, mix_shared
from moejax.options import check_choice


class SharedExperts(nnx.Module):
    """The shared SwiGLU `ffn` and, for a learned mix, `mix_kernel [D, width]` and (softmax
    only) `mix_bias [width]`, width = SHARED_MIXES[mix].width (2 softmax, 1 sigmoid)."""

    def __init__(self, d_model: int, d_hidden: int, mix: str, *, rngs: nnx.Rngs):
        check_choice("moe.shared_mix", mix, SHARED_MIXES)
        row = SHARED_MIXES[mix]
        self.mix = mix
        self.ffn = SwiGLU(d_model, d_hidden, rngs=rngs)
        zeros = lambda *shape: nnx.Param(jnp.zeros(shape, jnp.float32))  # noqa: E731
        self.mix_kernel = zeros(d_model, row.width) if row.width else None
        self.mix_bias = zeros(row.width) if row.bias else None

    def mix_logits(self, u: jax.Array) -> jax.Array | None:
        """u: [T, D] -> [T, width] gate logits `u W_c (+ b_c)` in float32 or wider, or None."""
        if self.mix_kernel is None:
            return None
        wide = at_least_float32(u.dtype)
        logits = u.astype(wide) @ self.mix_kernel[...].astype(wide)
        return logits if self.mix_bias is None else logits + self.mix_bias[...].astype(wide)

    def __call__(self, u: jax.Array, routed: jax.Array) -> jax.Array:
        """u: [T, D] block input, routed: [T, D] routed output -> [T, D] joined output."""
        return mix_shared(routed, self.ffn(u), self.mix_logits(u), self.mix)
