"""Dense engine: every expert on every token, then pick each slot's output.

The reference engine (E times the work of the routed ones); it respects a capacity plan's
drops so that its output always matches the capacity engine's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.moe.dispatch import DispatchPlan, SortedActivations
from moejax.moe.experts import ExpertWeights, experts_on_buffers


def dense_engine(x: jax.Array, plan: DispatchPlan, weights: ExpertWeights, *,
                 activations: str | None = None):
    """Runs the experts on their token-slots; the engine contract (`engines/__init__.py`).

    Args:
      x: [T, D] tokens in the compute dtype.
      plan: the dispatch plan.
      weights: expert weights [E, D, F], [E, D, F], [E, F, D].
      activations: None, "slots" (z as [T, K, F]) or "sorted" (this engine has no sorted
        layout: z's slot rows as `SortedActivations.from_slots`).

    Returns:
      (y_slots [T, K, D], z or None); dropped slots are zero.
    """
    num_experts, tokens = weights.w_gate.shape[0], x.shape[0]
    everyone = jnp.broadcast_to(x[None], (num_experts, *x.shape))  # every token in every buffer
    y_all, z_all = experts_on_buffers(everyone, weights)  # [E, T, D], [E, T, F]
    kept = plan.kept[..., None]
    token = jnp.arange(tokens)[:, None]
    y_slots = jnp.where(kept, y_all[plan.expert_idx, token], 0)
    if activations is None:
        return y_slots, None
    z_slots = jnp.where(kept, z_all[plan.expert_idx, token], 0)
    if activations == "sorted":
        return y_slots, SortedActivations.from_slots(z_slots, plan.kept)
    return y_slots, z_slots
