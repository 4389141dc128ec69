"""Expert parallelism, simulated: the all-to-all traffic model and the expert placements that
minimise it. `placement.py` measures these placements on held-out traces, against random ones
and a load-matched null.

Traffic model (`a2a_messages`): expert parallelism with context-coherent dispatch. Every
router (MoE layer) spreads its E experts over D devices, E/D each (balanced); `placement[r, e]`
is the device of expert e of router r. After router r's layer, a token's hidden state is on
S_r, the devices of its k experts at r (each computed an expert output for it; the combined
state is formed there, and the next layer's attention runs where the state is, the non-expert
weights and the KV cache being replicated). The dispatch to router r+1 sends one copy of the
state, d_model values in bf16, to every device of S_{r+1} that does not hold it already:

    messages per token = sum_{r = 0}^{R-2} |S_{r+1} \\ S_r|,
    bytes per token    = messages x d_model x 2.

Not counted, the same for every balanced placement or outside the question: the first router's
dispatch and the last router's combine (from and to the token's home device), and the exchange
of the k partial outputs within a layer.

Placements, all learned on training-split traces and measured on validation-split ones:
- "pairs" (`place_by_pairs`): the largest co-located transition mass
      J(P) = sum_r sum_{a, b} C_r[a, b] [P[r, a] == P[r+1, b]],
  C_r[a, b] = how many tokens chose a at router r and b at router r+1 (`pair_counts`), by
  block-coordinate ascent: with every other router fixed, the best placement of router r is an
  assignment problem, solved exactly (scipy's `linear_sum_assignment`, E experts x E slots, E/D
  slots per device, expert e scoring on device d the counts it shares with the experts on d at
  routers r-1 and r+1); routers are re-placed forward then backward until a sweep gains nothing
  (J never decreases), from `RESTARTS` seeded random starts, the best J kept. With k = 1 a
  message is exactly a pair not co-located, so J is the traffic saved; with k > 1 it is only a
  proxy: a token whose k experts at r sit on several devices has its state on all of them, which
  J does not see (a test shows a case where the J optimum costs a message the best placement
  does not).
- "path" (`place_experts`): the fewest training messages. The messages are a sum over
  consecutive router pairs, so dynamic programming along the routers over every balanced
  layout of one router finds the optimum exactly (`exact_placement`; E! / ((E/D)!^D) layouts:
  70 at E=8 on D=2, 2520 on D=4); above `EXACT_LAYOUTS` layouts (E=8 on D=8: 40,320),
  `search_placement`: swaps of two experts of one router kept when they cut the training
  messages (`refine_placement`), from the "pairs" placement and `SWAP_RESTARTS` random starts.
- "random" (`random_placement`): each router's experts in a seeded random order, E/D per
  device; the reference, averaged over `placement.RANDOM_PLACEMENTS` placements.
The tests check each optimiser against exhaustive search on small instances.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment

from moejax.options import check_int

RESTARTS = 128  # random starts of `place_by_pairs` (8 missed the optimum of small tests)
EXACT_LAYOUTS = 5000  # `place_experts` is exact up to this many layouts per router
SWAP_RESTARTS = 8  # random starts of `search_placement`, beside the "pairs" placement


def pair_counts(traces: np.ndarray, num_experts: int) -> np.ndarray:
    """[R - 1, E, E] C_r[a, b]: tokens that chose a at router r and b at router r+1 (every pair
    of the token's k x k choices counts once)."""
    traces = np.asarray(traces)
    hot = multi_hot(traces, num_experts).astype(np.float64)  # [N, R, E]
    return np.einsum("nra,nrb->rab", hot[:, :-1], hot[:, 1:])


def multi_hot(traces: np.ndarray, size: int, values: np.ndarray | None = None) -> np.ndarray:
    """[N, R, size] bool: which of `size` ids (traces, or values[r, traces]) each token has."""
    ids = traces if values is None else values[np.arange(traces.shape[1])[:, None], traces]
    hot = np.zeros((*traces.shape[:2], size), bool)
    n, r = np.indices(traces.shape[:2])
    for j in range(traces.shape[2]):
        hot[n, r, ids[:, :, j]] = True
    return hot


def _check_devices(num_experts: int, devices: int) -> None:
    check_int("devices", devices, 1, num_experts)
    if num_experts % devices:
        raise ValueError(f"devices={devices} must divide num_experts={num_experts} "
                         "(E/D experts per device)")


def colocated_mass(placement: np.ndarray, counts: np.ndarray) -> float:
    """J(P) / sum of C: the fraction of consecutive-router pair mass whose two experts share a
    device (`counts` from `pair_counts`; 1 when R = 1 or nothing was counted)."""
    placement = np.asarray(placement)
    same = placement[:-1, :, None] == placement[1:, None, :]  # [R - 1, E, E]
    total = counts.sum()
    return float((counts * same).sum() / total) if total else 1.0


def _layer_scores(placement, counts, r, devices):
    """[D, E] pair mass expert e of router r shares with device d's experts at r-1 and r+1."""
    routers, num_experts = placement.shape
    score = np.zeros((devices, num_experts))
    if r > 0:
        np.add.at(score, placement[r - 1], counts[r - 1])  # rows a -> device of a
    if r + 1 < routers:
        np.add.at(score, placement[r + 1], counts[r].T)  # C_r[e, b] by device of b
    return score


def _best_layer(score: np.ndarray, per_device: int) -> np.ndarray:
    """The balanced assignment of E experts to D devices maximising sum score[P[e], e]."""
    slot_device = np.repeat(np.arange(score.shape[0]), per_device)  # [E] slot -> device
    experts, slots = linear_sum_assignment(-score[slot_device].T)  # rows experts, cols slots
    out = np.empty(score.shape[1], int)
    out[experts] = slot_device[slots]
    return out


def random_placement(routers: int, num_experts: int, devices: int,
                     rng: np.random.Generator) -> np.ndarray:
    """[R, E] each router's experts in a random order, E/D consecutive ones per device."""
    _check_devices(num_experts, devices)
    per_device = num_experts // devices
    slots = np.repeat(np.arange(devices), per_device)
    return np.stack([slots[rng.permutation(num_experts)] for _ in range(routers)])


def place_by_pairs(counts: np.ndarray, devices: int, *, restarts: int = RESTARTS,
                   seed: int = 0, max_sweeps: int = 100) -> np.ndarray:
    """Stage 1: [R, E] the balanced placement of largest co-located pair mass found (block
    coordinate ascent with exact per-router assignments, best of `restarts` random starts).

    counts: [R - 1, E, E] from `pair_counts` on training traces.
    """
    counts = np.asarray(counts, np.float64)
    routers, num_experts = counts.shape[0] + 1, counts.shape[1]
    _check_devices(num_experts, devices)
    check_int("restarts", restarts)
    per_device = num_experts // devices
    rng = np.random.default_rng(seed)
    best, best_mass = None, -1.0
    order = list(range(routers)) + list(range(routers - 2, 0, -1))  # forward, then back
    for _ in range(restarts):
        placement = random_placement(routers, num_experts, devices, rng)
        mass = colocated_mass(placement, counts)
        for _ in range(max_sweeps):
            for r in order:
                placement[r] = _best_layer(_layer_scores(placement, counts, r, devices),
                                           per_device)
            new = colocated_mass(placement, counts)
            if new <= mass + 1e-12:
                break
            mass = new
        if mass > best_mass + 1e-12:
            best, best_mass = placement.copy(), mass
    return best


def refine_placement(placement: np.ndarray, traces: np.ndarray, *,
                     max_passes: int = 100) -> np.ndarray:
    """Stage 2: `placement` [R, E] improved by swaps of two experts of one router on different
    devices, each kept when it lowers the total `a2a_messages` of `traces` (first improvement,
    passes over every router and pair until one keeps nothing; balance is kept by swapping)."""
    placement = np.array(placement)
    traces = np.asarray(traces)
    routers, num_experts = placement.shape
    devices = int(placement.max()) + 1
    hot = multi_hot(traces, devices, placement)  # [N, R, D]

    def moved(r, layer_hot):  # messages of the router pairs (r-1, r) and (r, r+1)
        total = 0
        if r > 0:
            total += (layer_hot & ~hot[:, r - 1]).sum()
        if r + 1 < routers:
            total += (hot[:, r + 1] & ~layer_hot).sum()
        return int(total)

    def layer_hot(r, layer):
        out = np.zeros((traces.shape[0], devices), bool)
        for j in range(traces.shape[2]):
            out[np.arange(traces.shape[0]), layer[traces[:, r, j]]] = True
        return out

    for _ in range(max_passes):
        kept = False
        for r in range(routers):
            current = moved(r, hot[:, r])
            for a in range(num_experts):
                for b in range(a + 1, num_experts):
                    if placement[r, a] == placement[r, b]:
                        continue
                    layer = placement[r].copy()
                    layer[a], layer[b] = layer[b], layer[a]
                    candidate = layer_hot(r, layer)
                    cost = moved(r, candidate)
                    if cost < current:
                        placement[r], hot[:, r], current, kept = layer, candidate, cost, True
        if not kept:
            break
    return placement


def place_experts(train: np.ndarray, num_experts: int, devices: int, *, seed: int = 0,
                  start: np.ndarray | None = None,
                  max_layouts: int = EXACT_LAYOUTS) -> np.ndarray:
    """[R, E] the path-aware placement: fewest total `a2a_messages` on `train`, exactly
    (`exact_placement`) when one router has at most `max_layouts` balanced layouts, else by
    `search_placement` (`start`: its stage 1, if already computed)."""
    if layout_count(num_experts, devices) <= max_layouts:
        return exact_placement(train, num_experts, devices, max_layouts=max_layouts)
    return search_placement(train, num_experts, devices, seed=seed, start=start)


def search_placement(train: np.ndarray, num_experts: int, devices: int, *, seed: int = 0,
                     restarts: int = SWAP_RESTARTS,
                     start: np.ndarray | None = None) -> np.ndarray:
    """[R, E] local search for few `a2a_messages` on `train`: stage 1 (`place_by_pairs` on the
    pair counts of `train`, or `start` when given), then stage 2 (`refine_placement`) from it
    and from `restarts` seeded random placements; the placement of fewest training messages."""
    train = np.asarray(train)
    rng = np.random.default_rng(seed)
    if start is None:
        start = place_by_pairs(pair_counts(train, num_experts), devices, seed=seed)
    starts = [np.asarray(start)]
    starts += [random_placement(train.shape[1], num_experts, devices, rng)
               for _ in range(restarts)]
    refined = [refine_placement(start, train) for start in starts]
    return min(refined, key=lambda p: int(a2a_messages(train, p).sum()))  # first of ties


def layout_count(num_experts: int, devices: int) -> int:
    """E! / ((E/D)!^D): the balanced placements of one router."""
    _check_devices(num_experts, devices)
    return math.factorial(num_experts) // math.factorial(num_experts // devices) ** devices


def balanced_layouts(num_experts: int, devices: int) -> np.ndarray:
    """[L, E] every balanced placement of one router (E! / ((E/D)!^D) of them)."""
    _check_devices(num_experts, devices)
    per_device = num_experts // devices
    out = []

    def extend(prefix, left):
        if len(prefix) == num_experts:
            out.append(prefix)
            return
        for device in range(devices):
            if left[device]:
                left[device] -= 1
                extend(prefix + [device], left)
                left[device] += 1

    extend([], [per_device] * devices)
    return np.array(out)


def exact_placement(train: np.ndarray, num_experts: int, devices: int, *,
                    max_layouts: int = 5000) -> np.ndarray:
    """[R, E] a placement of fewest total `a2a_messages` on `train`, exactly: the messages are
    a sum over consecutive router pairs, so dynamic programming along the routers over every
    balanced layout of one router (`balanced_layouts`) finds the optimum. Feasible for small
    E only (L^2 work per router pair; 70 layouts at E=8, D=2, 2520 at D=4).

    Raises:
      ValueError: more than `max_layouts` layouts.
    """
    train = np.asarray(train)
    tokens, routers, _ = train.shape
    layouts = balanced_layouts(num_experts, devices)
    if len(layouts) > max_layouts:
        raise ValueError(f"{len(layouts)} balanced layouts of E={num_experts} on D={devices}: "
                         f"more than max_layouts={max_layouts}")
    sets = [np.unique(np.sort(train[:, r], -1), axis=0, return_inverse=True)
            for r in range(routers)]  # the distinct expert sets of each router, per token
    # [L, S_r, D]: does layout l put one of set s's experts on device d
    hot = []
    for chosen, _ in sets:
        on = np.zeros((len(layouts), len(chosen), devices))
        rows, columns = np.indices(on.shape[:2])
        for j in range(chosen.shape[1]):
            on[rows, columns, layouts[:, chosen[:, j]]] = 1.0
        hot.append(on)
    best, back = np.zeros(len(layouts)), []
    for r in range(routers - 1):
        weights = np.zeros((len(sets[r][0]), len(sets[r + 1][0])))
        np.add.at(weights, (sets[r][1].ravel(), sets[r + 1][1].ravel()), 1)
        cost = sum((1 - hot[r][:, :, d]) @ weights @ hot[r + 1][:, :, d].T
                   for d in range(devices))  # [L, L] messages of layouts (i at r, j at r+1)
        total = best[:, None] + cost
        back.append(total.argmin(0))
        best = total.min(0)
    chosen = [int(best.argmin())]
    for pointers in reversed(back):
        chosen.append(int(pointers[chosen[-1]]))
    return layouts[chosen[::-1]]


def a2a_messages(traces: np.ndarray, placement: np.ndarray) -> np.ndarray:
    """[N] dispatch messages per token: sum over r < R-1 of |S_{r+1} \\ S_r|, S_r the devices of
    the token's experts at router r (module docstring)."""
    traces, placement = np.asarray(traces), np.asarray(placement)
    hot = multi_hot(traces, int(placement.max()) + 1, placement)  # [N, R, D]
    return (hot[:, 1:] & ~hot[:, :-1]).sum((1, 2))
