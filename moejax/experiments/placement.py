"""Expert parallelism, simulated: where each layer's experts live, and what crosses devices.

Paper A's inference speed-up is about expert-parallel all-to-all traffic: with "more stable
expert pathways", a token that used expert a in layer l picks, more often, an expert b in layer
l+1 that sits on the same device, so its hidden state need not move. This module measures that
on routing traces (each token's chosen experts per router, in depth order, `[N, R, k]`).

The traffic model (`a2a_messages`: dispatch messages per token, bytes = messages x d_model x 2)
and the placements ("path" `place_experts`, "pairs" `place_by_pairs`, "random"
`random_placement`) are in `placement_search.py`. This module measures them: each placement is
learned on training-split traces and its `Traffic` measured on validation-split ones
(`placement_traffic`), the random reference averaged over `RANDOM_PLACEMENTS` placements;
`cache_sweep` replays the validation traces through the expert-offload caches of `offload.py`
at every cache size.

Load-matched null (`null_traces`): i.i.d. tokens whose experts at router r are drawn,
independently across routers and tokens, with inclusion probabilities equal to the run's own
per-router loads pi_r[e] = P(token picks e at r) (`expert_loads`; sum_e pi_r[e] = k), k distinct
per token: randomized systematic sampling (experts in a random order, the intervals of lengths
pi laid end to end on [0, k), the k points u, u+1, ..., u+k-1 with u ~ U[0, 1): each interval is
at most 1 long, so it holds at most one point, and expert e is picked with probability exactly
pi[e]). A null keeps the loads, so whatever a metric owes to unbalanced loads alone, and removes
the pathways: a metric's difference real - null is what the pathways add (`against_null`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from moejax.experiments import offload
from moejax.experiments.placement_search import (
    a2a_messages,
    colocated_mass,
    multi_hot,
    pair_counts,
    place_by_pairs,
    place_experts,
    random_placement,
)

RANDOM_PLACEMENTS = 8  # random placements averaged for the reference
BYTES_PER_VALUE = 2  # bf16 hidden states


@dataclasses.dataclass(frozen=True)
class Traffic:
    """Cross-device dispatch traffic of one placement on held-out traces."""

    messages_per_token: float  # mean over tokens of `a2a_messages`
    colocated: float  # `colocated_mass` on the held-out pairs

    def bytes_per_token(self, d_model: int, bytes_per_value: int = BYTES_PER_VALUE) -> float:
        return self.messages_per_token * d_model * bytes_per_value


def traffic(traces: np.ndarray, placement: np.ndarray, num_experts: int) -> Traffic:
    """`Traffic` of `placement` on `traces` [N, R, k]."""
    return Traffic(float(a2a_messages(traces, placement).mean()),
                   colocated_mass(placement, pair_counts(traces, num_experts)))


def placement_traffic(train: np.ndarray, held_out: np.ndarray, num_experts: int, devices: int,
                      *, seed: int = 0, randoms: int = RANDOM_PLACEMENTS) -> dict:
    """{"path": Traffic, "pairs": Traffic, "random": Traffic} on `held_out`: the path-aware
    placement learned on `train` (`place_experts`), its stage 1 alone (`place_by_pairs`), and
    the mean of `randoms` seeded random placements."""
    train = np.asarray(train)
    rng = np.random.default_rng(seed)
    rand = [traffic(held_out, random_placement(train.shape[1], num_experts, devices, rng),
                    num_experts) for _ in range(randoms)]
    pairs = place_by_pairs(pair_counts(train, num_experts), devices, seed=seed)
    placed = place_experts(train, num_experts, devices, seed=seed, start=pairs)
    return {"path": traffic(held_out, placed, num_experts),
            "pairs": traffic(held_out, pairs, num_experts),
            "random": Traffic(float(np.mean([t.messages_per_token for t in rand])),
                              float(np.mean([t.colocated for t in rand])))}


def expert_loads(traces: np.ndarray, num_experts: int) -> np.ndarray:
    """[R, E] fraction of tokens that chose expert e at router r (each row sums to k)."""
    return multi_hot(np.asarray(traces), num_experts).mean(0)


def null_traces(loads: np.ndarray, tokens: int, rng: np.random.Generator) -> np.ndarray:
    """[tokens, R, k] i.i.d. traces: at router r, k distinct experts, expert e with inclusion
    probability loads[r, e] exactly (randomized systematic sampling, module docstring).

    loads: [R, E], each row summing to the integer k, entries in [0, 1] (`expert_loads`).
    """
    loads = np.asarray(loads, np.float64)
    routers, num_experts = loads.shape
    k = int(round(loads[0].sum()))
    if (loads.min() < 0 or loads.max() > 1 + 1e-9 or k < 1
            or not np.allclose(loads.sum(1), k, atol=1e-6)):
        raise ValueError("loads must be in [0, 1] with every router's row summing to the same "
                         f"integer k; row sums {loads.sum(1).round(6).tolist()}")
    loads = loads * (k / loads.sum(1, keepdims=True))
    order = np.argsort(rng.random((tokens, routers, num_experts)), axis=-1)
    ends = np.cumsum(np.take_along_axis(np.broadcast_to(loads, order.shape), order, -1), -1)
    points = rng.random((tokens, routers, 1)) + np.arange(k)  # [N, R, k]
    slot = (ends[:, :, None, :] <= points[..., None]).sum(-1)  # interval holding each point
    slot = np.minimum(slot, num_experts - 1)  # rounding at the far end
    return np.take_along_axis(order, slot, -1)


def null_like(traces: np.ndarray, num_experts: int, rng: np.random.Generator) -> np.ndarray:
    """`null_traces` of the loads and token count of `traces`."""
    traces = np.asarray(traces)
    return null_traces(expert_loads(traces, num_experts), traces.shape[0], rng)


def against_null(real: dict, null: dict) -> dict:
    """{metric: (real, null, real - null)} for the metrics in both dicts."""
    return {key: (real[key], null[key], real[key] - null[key]) for key in real if key in null}


def with_null(metrics_fn, train: np.ndarray, held_out: np.ndarray, num_experts: int, *,
              seed: int = 0) -> dict:
    """`against_null` of metrics_fn(train, held_out) and of metrics_fn on load-matched nulls
    of both splits (each split's own loads and token count; seeded)."""
    rng = np.random.default_rng(seed)
    null_train = null_like(train, num_experts, rng)
    null_held_out = null_like(held_out, num_experts, rng)
    return against_null(metrics_fn(train, held_out), metrics_fn(null_train, null_held_out))


def cache_sizes(k: int, num_experts: int) -> tuple[int, ...]:
    """The cache sizes M measured: k, 2k, 3k, ... below E (M = E holds every expert)."""
    return tuple(range(k, num_experts, k))


def cache_sweep(train: np.ndarray, held_out: np.ndarray, num_experts: int, expert_bytes: float,
                sizes=None) -> dict:
    """{metric name: value} of LRU and LRU + prefetch at every cache size M (`cache_sizes` by
    default): hit rate, experts and bytes moved per token (demand misses plus prefetches),
    prefetch precision; transitions learned on `train`, replayed on `held_out`."""
    k = np.asarray(held_out).shape[2]
    sizes = cache_sizes(k, num_experts) if sizes is None else sizes
    return offload.cache_metrics(held_out, num_experts, {f"M{size}": size for size in sizes},
                                 offload.transition_matrix(train, num_experts), expert_bytes)
