"""Dispatch plan against a NumPy loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.moe.dispatch import capacity_for, make_plan

T, E, K = 37, 6, 3


def _expert_idx(kind="uniform", seed=0):
    """[T, K] distinct experts per token; "skewed" leaves expert 5 empty and floods expert 0."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return np.stack([rng.permutation(E)[:K] for _ in range(T)]).astype(np.int32)
    rows = [np.concatenate([[0], rng.permutation(np.arange(1, E - 1))[:K - 1]]) for _ in range(T)]
    return np.stack(rows).astype(np.int32)


def _plan_ref(idx, capacity):
    """Slots offered to experts in token order (t, then j); a plain loop."""
    counts = np.zeros(E, int)
    position = np.zeros((T, K), int)
    for t in range(T):
        for j in range(K):
            position[t, j] = counts[idx[t, j]]
            counts[idx[t, j]] += 1
    order = [t * K + j for e in range(E) for t in range(T) for j in range(K) if idx[t, j] == e]
    kept = position < (capacity if capacity is not None else 10**9)
    return counts, position, order, kept


@pytest.mark.parametrize("kind", ["uniform", "skewed"])
@pytest.mark.parametrize("capacity", [None, 1, 4, 100])
def test_plan_matches_loop(kind, capacity):
    idx = _expert_idx(kind)
    plan = make_plan(jnp.asarray(idx), E, capacity)
    counts, position, order, kept = _plan_ref(idx, capacity)
    np.testing.assert_array_equal(plan.tokens_per_expert, counts)
    np.testing.assert_array_equal(plan.position_in_expert, position)
    np.testing.assert_array_equal(plan.sorted_slots, order)
    np.testing.assert_array_equal(plan.kept, kept)
    np.testing.assert_array_equal(plan.expert_idx, idx)
    assert int(plan.dropped) == int((~kept).sum())
    assert plan.capacity == capacity and plan.num_experts == E
    for name in ("sorted_slots", "position_in_expert", "tokens_per_expert", "dropped"):
        assert getattr(plan, name).dtype == jnp.int32, name
    if kind == "skewed":
        assert counts[E - 1] == 0 and counts[0] == T
    if capacity == 4:
        assert int(plan.dropped) > 0


def test_plan_under_jit_keeps_capacity_static():
    idx = _expert_idx("skewed", seed=1)
    plan = jax.jit(make_plan, static_argnums=(1, 2))(jnp.asarray(idx), E, 3)
    counts, position, order, kept = _plan_ref(idx, 3)
    assert plan.capacity == 3
    np.testing.assert_array_equal(plan.sorted_slots, order)
    np.testing.assert_array_equal(plan.kept, kept)
    assert int(plan.dropped) == int((~kept).sum())


def test_repeated_expert_in_one_token():
    idx = np.zeros((T, K), np.int32)  # every slot to expert 0, in slot order t*K + j
    plan = make_plan(jnp.asarray(idx), E, 5)
    np.testing.assert_array_equal(plan.sorted_slots, np.arange(T * K))
    np.testing.assert_array_equal(plan.position_in_expert, np.arange(T * K).reshape(T, K))
    assert int(plan.dropped) == T * K - 5


def test_capacity_formula():
    assert capacity_for(4096, 4, 64, 1.25) == 320
    assert capacity_for(37, 3, 6, 1.0) == 19  # ceil(18.5)
    assert capacity_for(1, 1, 64, 0.01) == 1
    assert capacity_for(48, 2, 8, 1.0) == 12  # exact: no rounding up
    for tokens, top_k, experts, factor in [(37, 3, 6, 0.5), (100, 2, 7, 1.25), (5, 1, 3, 2.0)]:
        assert capacity_for(tokens, top_k, experts, factor) == max(
            1, int(np.ceil(factor * tokens * top_k / experts)))
