"""Dense SwiGLU FFN: the non-MoE layers (`first_dense_layers`) and shared experts."""

from __future__ import annotations

import jax
from flax import nnx

from moejax.layers.experts import init_expert_weights, swiglu


class SwiGLU(nnx.Module):
    """A dense SwiGLU FFN D -> F -> D (dense layers and shared experts)."""

    def __init__(self, d_model: int, d_hidden: int, *, rngs: nnx.Rngs):
        w_gate, w_up, w_down = init_expert_weights(rngs.params(), 1, d_model, d_hidden)
        self.w_gate = nnx.Param(w_gate[0])
        self.w_up = nnx.Param(w_up[0])
        self.w_down = nnx.Param(w_down[0])

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., D] in the compute dtype -> [..., D]."""
        dtype = x.dtype
        y, _ = swiglu(x, self.w_gate[...].astype(dtype), self.w_up[...].astype(dtype),
                      self.w_down[...].astype(dtype))
        return y


