"""Dispatch plan against a NumPy loop."""

import jax.numpy as jnp
import numpy as np
import pytest

from moejax.layers.dispatch import capacity_for, make_plan

T, E, K = 37, 6, 3


def _expert_idx(seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(E)[:K] for _ in range(T)]).astype(np.int32)


@pytest.mark.parametrize("capacity", [None, 4, 100])
def test_plan_matches_loop(capacity):
    idx = _expert_idx()
    plan = make_plan(jnp.asarray(idx), E, capacity)
    counts = np.zeros(E, int)
    position = np.zeros((T, K), int)
    order = []
    for e in range(E):
        for t in range(T):
            for j in range(K):
                if idx[t, j] == e:
                    order.append(t * K + j)
    for t in range(T):
        for j in range(K):
            position[t, j] = counts[idx[t, j]]
            counts[idx[t, j]] += 1
    kept = position < (capacity if capacity is not None else 10**9)
    np.testing.assert_array_equal(plan.tokens_per_expert, counts)
    np.testing.assert_array_equal(plan.position_in_expert, position)
    np.testing.assert_array_equal(plan.sorted_slots, order)
    np.testing.assert_array_equal(plan.kept, kept)
    assert int(plan.dropped) == int((~kept).sum())
    assert plan.capacity == capacity


def test_capacity_formula():
    assert capacity_for(4096, 4, 64, 1.25) == 320
    assert capacity_for(37, 3, 6, 1.0) == 19  # ceil(18.5)
    assert capacity_for(1, 1, 64, 0.01) == 1
