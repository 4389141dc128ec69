"""Dense engine: every expert on every token, then pick each slot's output.

The reference engine (E times the work of the routed ones); it respects a capacity plan's
drops so that its output always matches the capacity engine's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.layers.dispatch import DispatchPlan
from moejax.layers.experts import ExpertWeights


def dense_engine(x: jax.Array, plan: DispatchPlan, weights: ExpertWeights, *,
                 with_activations: bool = False, sorted_activations: bool = False):
    """Runs the experts on their token-slots.

    Args:
      x: [T, D] tokens in the compute dtype.
      plan: the dispatch plan.
      weights: expert weights [E, D, F], [E, D, F], [E, F, D].
      with_activations: also return each slot's SwiGLU activation z.
      sorted_activations: engines with an expert-sorted layout may return z there, as
        `dispatch.SortedActivations`; this one has none and returns [T, K, F].

    Returns:
      (y_slots [T, K, D], z_slots [T, K, F] or None); dropped slots are zero.
    """
    gate = jnp.einsum("TD,EDF->TEF", x, weights.w_gate)
    up = jnp.einsum("TD,EDF->TEF", x, weights.w_up)
    z_all = jax.nn.silu(gate) * up
    y_all = jnp.einsum("TEF,EFD->TED", z_all, weights.w_down)
    kept = plan.kept[..., None]
    index = plan.expert_idx[..., None]
    y_slots = jnp.where(kept, jnp.take_along_axis(y_all, index, axis=1), 0)
    z_slots = None
    if with_activations:
        z_slots = jnp.where(kept, jnp.take_along_axis(z_all, index, axis=1), 0)
    return y_slots, z_slots
