"""Expert placement, all-to-all traffic and the load-matched null
(moejax/experiments/placement.py, placement_search.py) on hand-made traces, each outcome worked
out by hand in the comments."""

import itertools

import numpy as np
import pytest

from moejax.experiments import inference, placement, placement_search
from moejax.reporting import plots


def _paths(*tokens):
    """[N, R, 1] traces of top-1 paths."""
    return np.array(tokens)[:, :, None]


# E=4, D=2, R=3, k=1: layer-0 experts {0, 1} lead to layer-1 {2, 3} and back to {0, 1}; {2, 3}
# lead to {0, 1}, then {2, 3}. Every pair is co-located by
#   router 0: 0 1 -> device a, 2 3 -> b;  router 1: 2 3 -> a, 0 1 -> b;  router 2 as router 0.
BLOCKS = _paths((0, 2, 0), (1, 3, 1), (0, 3, 1), (2, 0, 2), (3, 1, 3), (2, 1, 3))


def test_pair_counts_by_hand():
    counts = placement_search.pair_counts(np.array([[[0, 1], [2, 3]], [[0, 2], [2, 1]]]), 4)
    # token 0: {0,1} x {2,3}; token 1: {0,2} x {2,1}
    expected = np.zeros((4, 4))
    for a, b in [(0, 2), (0, 3), (1, 2), (1, 3), (0, 2), (0, 1), (2, 2), (2, 1)]:
        expected[a, b] += 1
    np.testing.assert_array_equal(counts, expected[None])


def test_placement_finds_the_perfect_optimum():
    found = placement_search.place_by_pairs(placement_search.pair_counts(BLOCKS, 4), devices=2)
    counts = placement_search.pair_counts(BLOCKS, 4)
    assert placement_search.colocated_mass(found, counts) == 1.0
    for r in range(3):  # balanced: 2 experts per device per router
        assert sorted(np.bincount(found[r], minlength=2)) == [2, 2]
    assert found[0, 0] == found[0, 1] != found[0, 2] == found[0, 3]
    assert found[1, 2] == found[0, 0] and found[2, 0] == found[0, 0]
    np.testing.assert_array_equal(placement_search.a2a_messages(BLOCKS, found), np.zeros(6))
    # a random placement puts b on a's device with probability 1/2 (each expert is equally
    # likely on either device), so 2 pairs per token leave 1 message on average
    rng = np.random.default_rng(0)
    randoms = [placement_search.a2a_messages(
                   BLOCKS, placement_search.random_placement(3, 4, 2, rng)).mean()
               for _ in range(400)]
    assert np.mean(randoms) == pytest.approx(1.0, abs=0.05)


def _exact_optimum(counts, devices):
    """max J over every balanced placement: dynamic programming along the chain of routers
    over all balanced layouts of one router (exhaustive, for small E)."""
    routers, num_experts = counts.shape[0] + 1, counts.shape[1]
    layouts = np.array(sorted(set(itertools.permutations(
        np.repeat(np.arange(devices), num_experts // devices)))))  # [P, E]
    best = np.zeros(len(layouts))
    for r in range(routers - 1):
        same = layouts[:, None, :, None] == layouts[None, :, None, :]  # [P, P, E, E]
        best = (best[:, None] + (same * counts[r]).sum((2, 3))).max(0)
    return best.max() / counts.sum()


@pytest.mark.parametrize("num_experts,devices,routers", [(4, 2, 3), (4, 2, 5), (6, 2, 4),
                                                         (6, 3, 3), (8, 2, 4)])
def test_placement_matches_exhaustive_search(num_experts, devices, routers):
    rng = np.random.default_rng(num_experts * 10 + routers)
    for _ in range(3):
        counts = rng.poisson(rng.gamma(0.5, 4, (routers - 1, num_experts, num_experts)))
        counts = counts.astype(float)
        found = placement_search.place_by_pairs(counts, devices)
        assert placement_search.colocated_mass(found, counts) == pytest.approx(
            _exact_optimum(counts, devices))


def _fewest_messages(traces, num_experts, devices):
    """min total a2a_messages over every balanced placement (exhaustive)."""
    layouts = placement_search.balanced_layouts(num_experts, devices)
    return min(int(placement_search.a2a_messages(traces, np.array(choice)).sum())
               for choice in itertools.product(layouts, repeat=traces.shape[1]))


def test_balanced_layouts_are_all_there():
    layouts = placement_search.balanced_layouts(4, 2)
    assert len(layouts) == placement_search.layout_count(4, 2) == 6  # 4! / (2! 2!)
    assert {tuple(x) for x in layouts} == {(0, 0, 1, 1), (0, 1, 0, 1), (0, 1, 1, 0),
                                           (1, 0, 0, 1), (1, 0, 1, 0), (1, 1, 0, 0)}
    assert placement_search.layout_count(8, 4) == 2520
    assert placement_search.layout_count(8, 8) == 40320


@pytest.mark.parametrize("num_experts,devices,routers,k", [(4, 2, 3, 2), (4, 2, 3, 1),
                                                           (6, 3, 2, 2), (6, 2, 3, 3)])
def test_exact_and_searched_placements_against_exhaustive_search(num_experts, devices, routers,
                                                                  k):
    rng = np.random.default_rng(num_experts + routers + k)
    hot = rng.dirichlet(np.full(num_experts, 0.5), routers)  # skewed, correlated-free routing
    for _ in range(2):
        traces = np.stack([np.stack([rng.choice(num_experts, k, replace=False, p=hot[r])
                                     for r in range(routers)]) for _ in range(30)])
        fewest = _fewest_messages(traces, num_experts, devices)
        exact = placement_search.exact_placement(traces, num_experts, devices)
        assert placement_search.a2a_messages(traces, exact).sum() == fewest
        for r in range(routers):  # balanced
            assert (np.bincount(exact[r], minlength=devices) == num_experts // devices).all()
        searched = placement_search.search_placement(traces, num_experts, devices)
        assert placement_search.a2a_messages(traces, searched).sum() >= fewest
        start = placement_search.random_placement(routers, num_experts, devices, rng)
        refined = placement_search.refine_placement(start, traces)
        assert (placement_search.a2a_messages(traces, refined).sum()
                <= placement_search.a2a_messages(traces, start).sum())
        assert (np.sort(refined, 1) == np.sort(start, 1)).all()  # swaps keep the balance
    with pytest.raises(ValueError, match="more than max_layouts=5"):
        placement_search.exact_placement(traces, num_experts, devices, max_layouts=5)


def test_pair_mass_is_a_proxy_that_can_miss_the_fewest_messages():
    """E=4, D=2, k=2, two routers. Tokens ({1,2} -> {2,3}), twice ({1,2} -> {1,2}),
    ({2,3} -> {1,3}). Router 0 as {0,2 | 1,3} splits both of its sets {1,2} and {2,3} over the
    two devices: every token's state is then on both devices, and nothing moves (0 messages),
    whatever router 1 does. The most co-located pair mass (12 of the 16 pairs, e.g. router 0
    {1,2 | 0,3} and router 1 {1,2 | 0,3}) needs at least one message (the exhaustive search
    over all 36 placements: each placement of mass 12/16 leaves >= 1; with 0 messages the most
    mass is 10/16)."""
    traces = np.array([[[1, 2], [2, 3]], [[1, 2], [1, 2]], [[2, 3], [1, 3]],
                       [[1, 2], [1, 2]]])
    counts = placement_search.pair_counts(traces, 4)
    by_pairs = placement_search.place_by_pairs(counts, 2)
    assert placement_search.colocated_mass(by_pairs, counts) == 0.75
    assert placement_search.a2a_messages(traces, by_pairs).sum() >= 1
    exact = placement_search.exact_placement(traces, 4, 2)
    assert placement_search.a2a_messages(traces, exact).sum() == 0
    assert exact[0, 1] != exact[0, 2] and exact[0, 2] != exact[0, 3]
    path = placement_search.place_experts(traces, 4, 2)
    assert placement_search.a2a_messages(traces, path).sum() == 0
    searched = placement_search.search_placement(traces, 4, 2)
    assert placement_search.a2a_messages(traces, searched).sum() == 0


def test_a2a_messages_counted_by_hand():
    # E=4, D=2: experts {0,1} on device 0 and {2,3} on 1 at routers 0 and 2, {0,2} and {1,3}
    # at router 1; S_r: the devices of the token's experts at router r
    where = np.array([[0, 0, 1, 1], [0, 1, 0, 1], [0, 0, 1, 1]])
    traces = np.array([
        [[0, 1], [0, 2], [0, 1]],  # S = {0}, {0}, {0}: 0 + 0
        [[0, 2], [1, 3], [2, 3]],  # S = {0,1}, {1}, {1}: 0 + 0
        [[0, 1], [1, 3], [1, 2]],  # S = {0}, {1}, {0,1}: 1 + 1
        [[2, 3], [0, 3], [0, 1]],  # S = {1}, {0,1}, {0}: 1 + 0
        [[2, 3], [0, 2], [2, 3]],  # S = {1}, {0}, {1}: 1 + 1
    ])
    np.testing.assert_array_equal(placement_search.a2a_messages(traces, where), [0, 0, 2, 1, 2])
    moved = placement.traffic(traces, where, 4)
    assert moved.messages_per_token == 1.0
    assert moved.bytes_per_token(d_model=128) == 256.0  # one bf16 copy of 128 values


def test_placement_traffic_learns_on_train_and_beats_random():
    moved = placement.placement_traffic(BLOCKS, BLOCKS[:3], 4, 2, seed=1)
    assert moved["path"].messages_per_token == 0 and moved["path"].colocated == 1
    assert moved["random"].messages_per_token > 0


def test_bad_device_counts_are_named():
    with pytest.raises(ValueError, match="devices=3 must divide num_experts=4"):
        placement_search.place_by_pairs(np.ones((1, 4, 4)), 3)


def test_null_sampler_matches_loads_in_expectation():
    loads = np.array([[0.9, 0.6, 0.3, 0.2, 0.0, 0.0],
                      [1.0, 0.2, 0.2, 0.2, 0.2, 0.2],
                      [1 / 3] * 6])  # each row sums to k = 2
    tokens = 40_000
    null = placement.null_traces(loads, tokens, np.random.default_rng(0))
    assert null.shape == (tokens, 3, 2)
    assert (null[:, :, 0] != null[:, :, 1]).all()  # k distinct experts
    observed = placement.expert_loads(null, 6)
    # binomial standard error of a frequency sqrt(p (1 - p) / N) <= 0.0025: 5 se
    np.testing.assert_allclose(observed, loads, atol=0.0125)
    assert observed[1, 0] == 1.0 and observed[0, 4:].sum() == 0
    # independent across routers: the pair frequency is the product of the loads
    pairs = placement_search.pair_counts(null, 6) / tokens
    np.testing.assert_allclose(pairs[0], np.outer(loads[0], loads[1]), atol=0.015)
    with pytest.raises(ValueError, match="summing to the same integer k"):
        placement.null_traces(np.full((1, 4), 0.3), 5, np.random.default_rng(0))


def test_null_keeps_loads_and_removes_paths():
    """Against its null, the block-structured traces keep the loads but lose the paths: the
    path-aware placement's traffic is lower than on the null, so real - null < 0."""
    traces = np.tile(BLOCKS, (50, 1, 1))
    def messages(train, held_out):
        moved = placement.placement_traffic(train, held_out, 4, 2)
        return {"messages": moved["path"].messages_per_token}

    compared = placement.with_null(messages, traces, traces, 4, seed=0)
    real, null, diff = compared["messages"]
    assert real == 0 and null > 0.5 and diff == real - null
    assert placement.against_null({"a": 3.0, "b": 1.0}, {"a": 1.0}) == {"a": (3.0, 1.0, 2.0)}


def test_prefetch_hits_a_cycle_that_lru_cannot():
    """k=1, E=4, router 1 takes expert (e + 2) % 4 after e at router 0, cycling 0 1 2 3 twice.
    At every M < E LRU misses all 16 demands (4 experts cycle through at most 3 slots);
    prefetch loads router 1's expert every time (8 hits, 8 prefetches, all used): hit rate 1/2
    and the same 2 experts moved per token."""
    train = _paths(*[(e, (e + 2) % 4) for e in range(4)])
    held_out = _paths(*[(e, (e + 2) % 4) for e in range(4)] * 2)
    swept = placement.cache_sweep(train, held_out, 4, expert_bytes=1000.0)
    assert placement.cache_sizes(1, 4) == (1, 2, 3)
    assert placement.cache_sizes(2, 8) == (2, 4, 6)
    assert sorted({key.split("@")[1] for key in swept}) == ["M1", "M2", "M3"]
    for size in (1, 2, 3):
        assert swept[f"hit_rate lru@M{size}"] == 0
        assert swept[f"hit_rate prefetch@M{size}"] == 0.5
        assert swept[f"prefetch_precision prefetch@M{size}"] == 1.0
        assert swept[f"moved_bytes/token prefetch@M{size}"] == 2000.0
        assert swept[f"moved_bytes/token lru@M{size}"] == 2000.0
        assert swept[f"fetched/token lru@M{size}"] == 2.0


def test_prefetch_loses_at_m_equal_k_and_wins_above():
    """k=1, E=4. Learned: 0 -> 0 and 1 -> 3 (twice). Held out: (0, 0), (1, 0), three times:
    router 0 alternates 0 1, router 1 stays on 0, so the guess 3 after 1 is wrong.
    M=1=k. LRU: router 0 misses 6, router 1 misses once: hits 5/12, 7/6 fetched per token.
      Prefetch: tokens (1, 0) prefetch 3, which evicts 0, and router 1 misses; tokens (0, 0)
      hit (the first by prefetching 0): router 1 hits 3, misses 3, 4 prefetches (1 used):
      hits 3/12, (6 + 3 + 4) / 6 = 13/6 fetched, precision 1/4.
    M=2 > k. LRU: router 0 misses twice, router 1 once: hits 9/12, 3/6 fetched.
      Prefetch: 0 and 3 both fit: router 0 misses twice, router 1 never (0 prefetched for
      token 1, 3 for token 2, then both cached): hits 10/12, (2 + 2) / 6 fetched, precision 1/2.
    """
    train = _paths((0, 0), (1, 3), (1, 3))
    held_out = _paths(*[(0, 0), (1, 0)] * 3)
    swept = placement.cache_sweep(train, held_out, 4, expert_bytes=6.0, sizes=(1, 2))
    expected = {"lru@M1": (5 / 12, 7), "prefetch@M1": (3 / 12, 13),
                "lru@M2": (9 / 12, 3), "prefetch@M2": (10 / 12, 4)}
    for tag, (hit_rate, moved) in expected.items():
        assert swept[f"hit_rate {tag}"] == pytest.approx(hit_rate)
        assert swept[f"moved_bytes/token {tag}"] == pytest.approx(moved)  # 6 bytes x n / 6
    assert swept["prefetch_precision prefetch@M1"] == pytest.approx(1 / 4)
    assert swept["prefetch_precision prefetch@M2"] == pytest.approx(1 / 2)


def test_inference_metrics_with_null_are_flat(tmp_path):
    traces = {"train": np.tile(BLOCKS, (20, 1, 1)), "validation": np.tile(BLOCKS, (10, 1, 1)),
              "num_experts": 4, "d_model": 8, "expert_bytes": 100.0}
    metrics = inference.placement_metrics(traces, seed=0)
    assert metrics["a2a_bytes/token path@D2"] == 0
    assert metrics["a2a_cut @D2"] == 1.0
    assert metrics["a2a_bytes/token path@D2 - null"] == -metrics["a2a_bytes/token path@D2 null"]
    assert "a2a_bytes/token path@D4" in metrics and "a2a_bytes/token path@D8" not in metrics
    assert {"hit_rate lru@M1", "moved_bytes/token prefetch@M3 - null"} <= set(metrics)
    placed = {"arm": {key: [value, value] for key, value in metrics.items()}}
    lines = inference.placement_report_lines(placed, tmp_path)
    assert any(line.startswith("| arm | 2 | 0 ± 0 |") for line in lines)
    assert (tmp_path / "bytes_moved.png").exists()


def test_measure_placement_reads_kept_traces_and_keeps_its_file(tmp_path):
    np.savez_compressed(tmp_path / inference.TRACES_FILE, train=np.tile(BLOCKS, (20, 1, 1)),
                        validation=np.tile(BLOCKS, (10, 1, 1)), num_experts=4, d_model=8,
                        expert_bytes=100.0)

    class Config:
        seed = 3

    metrics = inference.measure_placement(tmp_path, Config)
    assert metrics["a2a_bytes/token path@D2"] == 0
    (tmp_path / inference.TRACES_FILE).unlink()  # measured once: the file answers
    assert inference.measure_placement(tmp_path, Config) == metrics


def test_bytes_plot_has_markers_at_measured_sizes_only(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = []
    errorbar = matplotlib.axes.Axes.errorbar

    def record(self, x, y, **options):
        drawn.append((list(x), options.get("linestyle")))
        return errorbar(self, x, y, **options)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", record)
    plots.plot_points({"a (lru)": ((2, 4, 6), [[1.0, 2.0], [0.5, 0.7], [0.2, 0.1]]),
                       "a null (lru)": ((2, 4), [[1.5], [0.9]])},
                      tmp_path / "bytes.png", title="t", xlabel="M", ylabel="bytes")
    assert drawn == [([2, 4, 6], "none"), ([2, 4], "none")]
    assert (tmp_path / "bytes.png").exists()


def test_placement_results_of_a_suite_directory(tmp_path):
    """Every inference run's kept traces -> the results page: claims on real - null, the
    traffic and cache tables, the plot beside it."""
    from moejax.experiments.runner import run_dir, suite_config
    from moejax.experiments.suites import SUITES

    rng = np.random.default_rng(0)
    for variant in SUITES["inference"]:
        for seed in range(2):
            directory = run_dir(tmp_path, suite_config(variant, tmp_path, seed=seed))
            directory.mkdir(parents=True)
            train = np.tile(BLOCKS, (20, 1, 1))
            held_out = np.where(rng.random((60, 3, 1)) < 0.2, rng.integers(0, 4, (60, 3, 1)),
                                np.tile(BLOCKS, (10, 1, 1)))  # the paths, 20% noise
            np.savez_compressed(directory / inference.TRACES_FILE, train=train,
                                validation=held_out, num_experts=4, d_model=8,
                                expert_bytes=100.0)
    path = inference.write_placement_results(tmp_path, tmp_path / "placement.md", seeds=2)
    text = path.read_text()
    assert "| topk/lb+sp+cp lowers a2a_bytes/token path@D2 vs topk/lb |" in text
    assert "## Expert-parallel traffic" in text and "## Offloaded decoding at every" in text
    assert (tmp_path / "placement_bytes_moved.png").exists()


def test_runs_without_traces_or_weights_add_nothing(tmp_path):
    class Config:
        seed = 0

    assert inference.maybe_measure_placement(tmp_path, Config) == {}
    assert not (tmp_path / inference.PLACEMENT_FILE).exists()
    offload_only = {"arm": {"hit_rate lru@0.25": [0.4, 0.5]}}
    assert inference.placement_report_lines(offload_only, tmp_path) == []
