"""Experts: stacked SwiGLU weights and the pure SwiGLU function (methods.md section 1).

z_e(x) = silu(x W_gate[e]) * (x W_up[e]) is the activation the specialization loss reads;
FFN_e(x) = z_e(x) W_down[e].
"""

from __future__ import annotations

from typing import NamedTuple

import jax
from flax import nnx


class ExpertWeights(NamedTuple):
    """Stacked expert weights, in the compute dtype.

    Attributes:
      w_gate: [E, D, F].
      w_up: [E, D, F].
      w_down: [E, F, D].
    """

    w_gate: jax.Array
    w_up: jax.Array
    w_down: jax.Array


def swiglu_activation(x: jax.Array, w_gate: jax.Array, w_up: jax.Array) -> jax.Array:
    """z = silu(x W_gate) * (x W_up).  x: [..., D], w_gate/w_up: [D, F] -> [..., F]."""
    return jax.nn.silu(x @ w_gate) * (x @ w_up)


def swiglu(x: jax.Array, w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array):
    """One SwiGLU FFN.  x: [..., D]; returns (y [..., D], z [..., F])."""
    z = swiglu_activation(x, w_gate, w_up)
    return z @ w_down, z


def init_expert_weights(key: jax.Array, num_experts: int, d_model: int, d_hidden: int):
    """Float32 weights [E, D, F], [E, D, F], [E, F, D] with fan-in scaled normal init."""
    k_gate, k_up, k_down = jax.random.split(key, 3)
    w_gate = jax.random.normal(k_gate, (num_experts, d_model, d_hidden)) * d_model**-0.5
    w_up = jax.random.normal(k_up, (num_experts, d_model, d_hidden)) * d_model**-0.5
    w_down = jax.random.normal(k_down, (num_experts, d_hidden, d_model)) * d_hidden**-0.5
    return w_gate, w_up, w_down


class Experts(nnx.Module):
    """E SwiGLU experts of hidden width F over model width D (float32 parameters)."""

    def __init__(self, num_experts: int, d_model: int, d_hidden: int, *, rngs: nnx.Rngs):
        w_gate, w_up, w_down = init_expert_weights(rngs.params(), num_experts, d_model, d_hidden)
        self.w_gate = nnx.Param(w_gate)
        self.w_up = nnx.Param(w_up)
        self.w_down = nnx.Param(w_down)

    def weights(self, dtype) -> ExpertWeights:
        """The weights cast once to the compute dtype."""
        return ExpertWeights(
            self.w_gate[...].astype(dtype), self.w_up[...].astype(dtype),
            self.w_down[...].astype(dtype),
        )
