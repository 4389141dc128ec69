"""Token embedding [V, D] and the untied output head [D, V]."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.layers.dtypes import at_least_float32


class Embed(nnx.Module):
    def __init__(self, vocab_size: int, d_model: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(stddev=1.0)
        self.embedding = nnx.Param(init(rngs.params(), (vocab_size, d_model), jnp.float32))

    def __call__(self, tokens: jax.Array, dtype) -> jax.Array:
        """tokens: [B, S] int -> [B, S, D] in dtype."""
        return self.embedding[...].astype(dtype)[tokens]


class LMHead(nnx.Module):
    def __init__(self, d_model: int, vocab_size: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(stddev=d_model**-0.5)
        self.kernel = nnx.Param(init(rngs.params(), (d_model, vocab_size), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, S, D] -> logits [B, S, V] in float32 (float64 for float64 x)."""
        logits = jnp.einsum("BSD,DV->BSV", x, self.kernel[...].astype(x.dtype))
        return logits.astype(at_least_float32(x.dtype))
