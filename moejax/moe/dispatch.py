"""Dispatch plan: the second stage, expert_idx -> where each token-slot goes.

A token-slot is one (token t, choice j) pair; there are T*K of them, numbered t*K + j.
Sorting slots by expert (stable, so ties stay in token order) groups each expert's tokens
together; an expert's slots are then numbered 0, 1, ... (`position_in_expert`). With a
capacity C, slots at position >= C are dropped and counted (docs/methods.md section 4).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from moejax.kernels import exclusive_cumsum


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DispatchPlan:
    """Where each token-slot goes.

    Attributes:
      expert_idx: [T, K] int32 chosen experts.
      sorted_slots: [T*K] int32 slot ids (t*K + j) in expert-sorted order (by expert, then token).
      position_in_expert: [T, K] int32 rank of the slot among its expert's slots.
      tokens_per_expert: [E] int32 slots routed to each expert (group sizes, before drops).
      kept: [T, K] bool, False for slots dropped by capacity.
      dropped: [] int32 number of dropped slots.
      capacity: static slots per expert, or None (dropless).
    """

    expert_idx: jax.Array
    sorted_slots: jax.Array
    position_in_expert: jax.Array
    tokens_per_expert: jax.Array
    kept: jax.Array
    dropped: jax.Array
    capacity: int | None = dataclasses.field(default=None, metadata=dict(static=True))

    @property
    def num_experts(self) -> int:
        return self.tokens_per_expert.shape[0]

    @property
    def group_start(self) -> jax.Array:
        """[E] int32 expert-sorted row where each expert's slots start (exclusive cumsum of
        `tokens_per_expert`): slot (t, j) sorts to group_start[expert_idx[t, j]] +
        position_in_expert[t, j]."""
        return exclusive_cumsum(self.tokens_per_expert)


def capacity_for(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    """C = ceil(capacity_factor * T * K / E), at least 1."""
    return max(1, math.ceil(capacity_factor * num_tokens * top_k / num_experts))


class SortedActivations(NamedTuple):
    """Expert activations left in the engine's expert-sorted layout (not gathered to slots).

    Attributes:
      rows: [M, F] activations, one row per filled buffer row.
      index: [T, K] int32 row of each slot; M (out of range) for a dropped slot.
    """

    rows: jax.Array
    index: jax.Array

    @classmethod
    def from_slots(cls, z_slots: jax.Array, kept: jax.Array) -> SortedActivations:
        """For engines without a sorted layout: z_slots [T, K, F] as rows [T*K, F]."""
        tokens, top_k, width = z_slots.shape
        slot = jnp.arange(tokens * top_k, dtype=jnp.int32).reshape(tokens, top_k)
        return cls(z_slots.reshape(-1, width), jnp.where(kept, slot, tokens * top_k))


def make_plan(expert_idx: jax.Array, num_experts: int, capacity: int | None = None,
              dispatch=None) -> DispatchPlan:
    """Builds the dispatch plan.

    Args:
      expert_idx: [T, K] int chosen experts.
      num_experts: E.
      capacity: slots per expert C, or None for dropless.
      dispatch: `kernels.TopKDispatch` of these choices (counts and expert-sorted positions
        from the fused kernel), or None to compute them here with a stable argsort.

    Returns:
      DispatchPlan.
    """
    tokens, top_k = expert_idx.shape
    flat_expert = expert_idx.reshape(-1).astype(jnp.int32)
    slot_ids = jnp.arange(tokens * top_k, dtype=jnp.int32)
    if dispatch is None:
        sorted_slots = jnp.argsort(flat_expert, stable=True).astype(jnp.int32)
        tokens_per_expert = jnp.bincount(flat_expert, length=num_experts).astype(jnp.int32)
        group_start = exclusive_cumsum(tokens_per_expert)
        rank_sorted = slot_ids - group_start[flat_expert[sorted_slots]]
        position_in_expert = jnp.zeros_like(flat_expert).at[sorted_slots].set(rank_sorted)
        position_in_expert = position_in_expert.reshape(tokens, top_k)
    else:  # a permutation: invert it with one scatter instead of sorting
        sorted_slots = jnp.zeros_like(slot_ids).at[
            dispatch.expert_sorted_index.reshape(-1)].set(slot_ids)
        tokens_per_expert = dispatch.tokens_per_expert.astype(jnp.int32)
        position_in_expert = dispatch.position_in_expert.astype(jnp.int32)
    if capacity is None:
        kept = jnp.ones((tokens, top_k), bool)
    else:
        kept = position_in_expert < capacity
    dropped = (tokens * top_k - kept.sum()).astype(jnp.int32)
    return DispatchPlan(
        expert_idx=expert_idx.astype(jnp.int32),
        sorted_slots=sorted_slots,
        position_in_expert=position_in_expert,
        tokens_per_expert=tokens_per_expert,
        kept=kept,
        dropped=dropped,
        capacity=capacity,
    )
