"""The expert-offloading simulator (moejax/experiments/offload.py) on hand-made traces, each
outcome worked out by hand in the comments."""

import numpy as np
import pytest

from moejax.experiments import offload


def test_lru_on_one_router():
    # E=4 experts, M=2 slots, k=1: 0 m [0], 1 m [0 1], 0 h [1 0], 2 m [0 2], 1 m [2 1], 0 m [1 0]
    traces = np.array([0, 1, 0, 2, 1, 0])[:, None, None]
    stats = offload.simulate(traces, num_experts=4, capacity=2)
    assert (stats.tokens, stats.hits, stats.misses, stats.prefetched) == (6, 1, 5, 0)
    assert stats.hit_rate == pytest.approx(1 / 6) and stats.fetched_per_token == 5 / 6
    assert np.isnan(stats.prefetch_precision)


def test_transitions_are_smoothed_pair_frequencies():
    traces = np.array([[[0], [2]], [[1], [3]], [[0], [2]]])  # 0 -> 2 twice, 1 -> 3 once
    matrix = offload.transition_matrix(traces, num_experts=4)
    np.testing.assert_allclose(matrix[0, 0], np.array([1, 1, 3, 1]) / 6)
    np.testing.assert_allclose(matrix[0, 1], np.array([1, 1, 1, 2]) / 5)
    np.testing.assert_allclose(matrix[0, 2], np.full(4, 0.25))  # never seen: uniform


def test_prefetch_from_the_previous_router():
    """Learned 0 -> 2 and 1 -> 3; held-out tokens (0, 2), (1, 3), (0, 1) with one slot each:
    router 0 misses 3 times; router 1 gets 2 and 3 prefetched (hits), then 2 prefetched for
    a token that picks 1 (a miss): hits 2, misses 4, prefetched 3, used 2. LRU alone: 6 misses.
    """
    transitions = offload.transition_matrix(np.array([[[0], [2]], [[1], [3]]]), 4)
    held_out = np.array([[[0], [2]], [[1], [3]], [[0], [1]]])
    stats = offload.simulate(held_out, 4, 1, policy="prefetch", transitions=transitions)
    assert (stats.hits, stats.misses, stats.prefetched, stats.prefetch_used) == (2, 4, 3, 2)
    assert stats.prefetch_precision == pytest.approx(2 / 3)
    assert stats.fetched_per_token == pytest.approx(7 / 3)  # more bytes moved than LRU's 2
    lru = offload.simulate(held_out, 4, 1)
    assert (lru.hits, lru.misses, lru.fetched_per_token) == (0, 6, 2.0)
    # link-bound: 2 experts of 1 MB per token over 32 GB/s
    assert offload.decode_tokens_per_s(lru, 1e6, offload.LINKS["pcie4_x16"]) == 16000.0


def test_bad_options_are_named():
    traces = np.zeros((3, 2, 2), int)
    with pytest.raises(ValueError, match="capacity=1 must be in \\[k=2, num_experts=4\\]"):
        offload.simulate(traces, 4, 1)
    with pytest.raises(ValueError, match="policy='fifo'; allowed: lru, prefetch"):
        offload.simulate(traces, 4, 2, policy="fifo")
    with pytest.raises(ValueError, match="needs transitions"):
        offload.simulate(traces, 4, 2, policy="prefetch")
