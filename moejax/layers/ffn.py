"""SwiGLU: the activation every expert and dense FFN computes, and the dense FFN module.

`z = silu(x W_gate) * (x W_up)`, `y = z W_down` (docs/methods.md section 1). z is the
activation the specialization loss reads. `swiglu_activation` has a custom VJP whose backward
is one fused elementwise pass over (gate, up), in float32 or wider; the experts' two layouts
(`moejax/moe/experts.py`) and the dense FFN below all go through it.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from moejax.layers.dtypes import at_least_float32


@jax.custom_vjp
def swiglu_activation(gate: jax.Array, up: jax.Array) -> jax.Array:
    """z = silu(gate) * up, elementwise.  gate, up: [..., F] -> [..., F] in their dtype."""
    return jax.nn.silu(gate) * up


def _swiglu_activation_fwd(gate, up):
    return swiglu_activation(gate, up), (gate, up)


def _swiglu_activation_bwd(residuals, d_z):
    gate, up = residuals
    wide = at_least_float32(gate.dtype)  # float64 stays float64 (gradient checks)
    gate32, up32, d_z32 = (a.astype(wide) for a in (gate, up, d_z))
    sig = jax.nn.sigmoid(gate32)
    silu = gate32 * sig
    d_gate = d_z32 * up32 * (sig + silu * (1 - sig))
    return d_gate.astype(gate.dtype), (d_z32 * silu).astype(up.dtype)


swiglu_activation.defvjp(_swiglu_activation_fwd, _swiglu_activation_bwd)


def swiglu(x: jax.Array, w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array):
    """One SwiGLU FFN.  x: [..., D], w_gate/w_up: [D, F], w_down: [F, D].

    The matmul outputs are named "ffn_in" and "ffn_out" for the rematerialisation policies
    (dense layers and shared experts; the routed experts' matmuls are not named).

    Returns:
      (y [..., D], z [..., F]), both in x's dtype.
    """
    gate, up = (checkpoint_name(x @ w, "ffn_in") for w in (w_gate, w_up))
    z = swiglu_activation(gate, up)
    return checkpoint_name(z @ w_down, "ffn_out"), z


def init_swiglu_weights(key: jax.Array, num: int, d_model: int, d_hidden: int):
    """`num` stacked float32 SwiGLUs [num, D, F], [num, D, F], [num, F, D], fan-in scaled."""
    k_gate, k_up, k_down = jax.random.split(key, 3)
    w_gate = jax.random.normal(k_gate, (num, d_model, d_hidden)) * d_model**-0.5
    w_up = jax.random.normal(k_up, (num, d_model, d_hidden)) * d_model**-0.5
    w_down = jax.random.normal(k_down, (num, d_hidden, d_model)) * d_hidden**-0.5
    return w_gate, w_up, w_down


class SwiGLU(nnx.Module):
    """A dense SwiGLU FFN D -> F -> D (dense layers and shared experts)."""

    def __init__(self, d_model: int, d_hidden: int, *, rngs: nnx.Rngs):
        w_gate, w_up, w_down = init_swiglu_weights(rngs.params(), 1, d_model, d_hidden)
        self.w_gate = nnx.Param(w_gate[0])
        self.w_up = nnx.Param(w_up[0])
        self.w_down = nnx.Param(w_down[0])

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., D] in the compute dtype -> [..., D]."""
        dtype = x.dtype
        y, _ = swiglu(x, self.w_gate[...].astype(dtype), self.w_up[...].astype(dtype),
                      self.w_down[...].astype(dtype))
        return y
