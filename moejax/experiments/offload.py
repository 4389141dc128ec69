"""Expert offloading, simulated: how often a token's experts are already in fast memory.

Paper A claims that specialized experts give "more stable expert pathways", which makes
inference with offloaded experts faster. This module replays routing traces (each token's
chosen experts per router, in decode order) through a cache model:

- every router (MoE layer) keeps `capacity` = M of its E experts in fast memory (GPU HBM);
  the others live in slow memory (host DRAM) and are fetched on demand, evicting the least
  recently used expert of that router ("lru");
- "prefetch" adds, once router r has routed a token, a fetch of router r+1's `prefetch` most
  likely experts given r's choices, scored with a transition matrix learned from other traces
  (`transition_matrix`: P(e' at r+1 | e at r)), before router r+1 routes that token. Prefetched
  experts enter as most recently used; a prefetch is *used* when router r+1 picks it for that
  token.

Counted per trace: demand hits and misses, experts fetched (misses plus prefetches), prefetch
precision (used / prefetched). `decode_tokens_per_s` turns fetched experts into a link-bound
rate: every fetched byte crosses the host-to-GPU link and compute is fully overlapped, so
tokens/s = bandwidth / (fetched bytes per token), an upper bound for a decode that is
limited by expert transfers (nominal one-direction bandwidths in `LINKS`).
"""

from __future__ import annotations

import collections
import dataclasses
from types import MappingProxyType

import numpy as np

from moejax.options import check_choice

POLICIES = ("lru", "prefetch")
# nominal host-to-GPU bandwidth of one direction, bytes/s
LINKS = MappingProxyType({"pcie4_x16": 32e9, "pcie5_x16": 64e9, "nvlink_c2c": 450e9})


@dataclasses.dataclass(frozen=True)
class OffloadStats:
    """Counts over a replay of `tokens` tokens."""

    tokens: int
    hits: int  # demanded experts already in fast memory
    misses: int  # demanded experts fetched on demand
    prefetched: int  # experts fetched ahead of their router
    prefetch_used: int  # of those, picked by their router for that token

    @property
    def hit_rate(self) -> float:
        return self.hits / max(self.hits + self.misses, 1)

    @property
    def fetched_per_token(self) -> float:
        """Experts moved over the link per token (demand misses plus prefetches)."""
        return (self.misses + self.prefetched) / max(self.tokens, 1)

    @property
    def prefetch_precision(self) -> float:
        """Used / prefetched; NaN when nothing was prefetched."""
        return self.prefetch_used / self.prefetched if self.prefetched else float("nan")


def transition_matrix(traces: np.ndarray, num_experts: int) -> np.ndarray:
    """[R - 1, E, E] P(expert e' at router r+1 | expert e at router r), row-normalised counts
    of every (choice at r, choice at r+1) pair of the same token (add-one smoothed).

    traces: [N, R, k] int chosen experts per token and router.
    """
    traces = np.asarray(traces)
    _, routers, _ = traces.shape
    counts = np.ones((max(routers - 1, 0), num_experts, num_experts))
    for r in range(routers - 1):
        for here, there in zip(traces[:, r], traces[:, r + 1], strict=True):
            for e in here:
                for f in there:
                    counts[r, e, f] += 1
    return counts / counts.sum(-1, keepdims=True)


def simulate(traces: np.ndarray, num_experts: int, capacity: int, *, policy: str = "lru",
             transitions: np.ndarray | None = None, prefetch: int | None = None) -> OffloadStats:
    """Replays `traces` [N, R, k] (decode order) through per-router LRU caches of `capacity`
    experts, starting empty.

    Args:
      policy: "lru" (fetch on demand) or "prefetch" (also fetch router r+1's `prefetch`
        likeliest experts under `transitions` once router r has routed the token).
      transitions: [R - 1, E, E] from `transition_matrix` (policy "prefetch").
      prefetch: experts prefetched per router and token (default k).

    Raises:
      ValueError: a bad policy, capacity, or missing transitions, named.
    """
    traces = np.asarray(traces)
    tokens, routers, k = traces.shape
    check_choice("policy", policy, POLICIES)
    if not k <= capacity <= num_experts:
        raise ValueError(f"capacity={capacity} must be in [k={k}, num_experts={num_experts}]")
    if policy == "prefetch" and (transitions is None or transitions.shape !=
                                 (routers - 1, num_experts, num_experts)):
        raise ValueError(f"policy='prefetch' needs transitions [R - 1, E, E] = "
                         f"{(routers - 1, num_experts, num_experts)}")
    prefetch = k if prefetch is None else prefetch
    caches = [collections.OrderedDict() for _ in range(routers)]  # expert -> None, LRU first
    hits = misses = prefetched = used = 0

    def load(cache, expert):
        cache[expert] = None
        cache.move_to_end(expert)
        if len(cache) > capacity:
            cache.popitem(last=False)

    for n in range(tokens):
        ahead = set()  # experts prefetched for this router and token
        for r in range(routers):
            cache, chosen = caches[r], traces[n, r]
            used += len(ahead & set(chosen.tolist()))
            for expert in chosen.tolist():
                if expert in cache:
                    hits += 1
                    cache.move_to_end(expert)
                else:
                    misses += 1
                    load(cache, expert)
            ahead = set()
            if policy == "prefetch" and r + 1 < routers:
                score = transitions[r][chosen].sum(0)
                for expert in np.argsort(-score, kind="stable")[:prefetch].tolist():
                    if expert not in caches[r + 1]:
                        prefetched += 1
                        ahead.add(expert)
                        load(caches[r + 1], expert)
    return OffloadStats(tokens, hits, misses, prefetched, used)


def decode_tokens_per_s(stats: OffloadStats, expert_bytes: float, bandwidth: float) -> float:
    """Link-bound decode rate: bandwidth / (experts fetched per token x bytes per expert)."""
    moved = stats.fetched_per_token * expert_bytes
    return float("inf") if moved == 0 else bandwidth / moved


def cache_metrics(held_out: np.ndarray, num_experts: int, capacities: dict, transitions,
                  expert_bytes: float) -> dict:
    """{metric name: value} of every policy at every cache size: hit rate, experts and bytes
    fetched per token, prefetch precision and the link-bound decode rate per `LINKS` entry.

    capacities: tag -> M (e.g. {"0.25": 2} or {"M4": 4}); a metric is named
    "<metric> <policy>@<tag>". transitions: learned on the training traces
    (`transition_matrix`); held_out: [N, R, k] the traces replayed.
    """
    out = {}
    for label, capacity in capacities.items():
        for policy in POLICIES:
            stats = simulate(held_out, num_experts, capacity, policy=policy,
                             transitions=transitions)
            tag = f"{policy}@{label}"
            out[f"hit_rate {tag}"] = stats.hit_rate
            out[f"fetched/token {tag}"] = stats.fetched_per_token
            out[f"moved_bytes/token {tag}"] = stats.fetched_per_token * expert_bytes
            if policy == "prefetch":
                out[f"prefetch_precision {tag}"] = stats.prefetch_precision
            for link, bandwidth in LINKS.items():
                out[f"tokens/s {link} {tag}"] = decode_tokens_per_s(stats, expert_bytes,
                                                                    bandwidth)
    return out

