"""Shared experts: always-on SwiGLU experts joined to the routed output.

S shared experts are stored as one SwiGLU of width S * shared_d_hidden (exactly their sum,
HF DeepSeek's `shared_experts` layout). `shared_mix="sum"` adds them (DeepSeekMoE);
`"softmax"` mixes with a learned 2-way gate `c = softmax(W_c u + b_c)`:
`c0 * routed + c1 * shared` (CartesianMoE).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.layers.dtypes import at_least_float32
from moejax.layers.ffn import SwiGLU
from moejax.moe.combine import mix_shared


class SharedExperts(nnx.Module):
    def __init__(self, d_model: int, d_hidden: int, mix: str, *, rngs: nnx.Rngs):
        self.ffn = SwiGLU(d_model, d_hidden, rngs=rngs)
        learned = mix == "softmax"
        self.mix_kernel = nnx.Param(jnp.zeros((d_model, 2), jnp.float32)) if learned else None
        self.mix_bias = nnx.Param(jnp.zeros((2,), jnp.float32)) if learned else None

    def __call__(self, u: jax.Array, routed: jax.Array) -> jax.Array:
        """u: [T, D] block input, routed: [T, D] routed output -> [T, D] joined output."""
        mix_logits = None
        if self.mix_kernel is not None:
            wide = at_least_float32(u.dtype)
            mix_logits = (u.astype(wide) @ self.mix_kernel[...].astype(wide)
                          + self.mix_bias[...].astype(wide))
        return mix_shared(routed, self.ffn(u), mix_logits)
