"""The inference suite's measurement: a trained run's routing traces, replayed offloaded.

Paper A's inference claim: specialized experts take "more stable expert pathways", so an
inference system that keeps only some experts in fast memory fetches fewer. For one finished
run this module
1. records the routing of text, token by token: the experts each token chose in every router,
   in depth order (a causal model routes token t from tokens <= t only, so the forward pass over
   a window routes exactly as decoding it one token at a time with a KV cache does: tested for
   `moejax.generate`);
2. learns the router-to-next-router transition matrix on training-split traces;
3. replays validation-split traces (`offload.simulate`) with every router caching M of its E
   experts, M/E in CACHE_FRACTIONS, under LRU and under LRU plus prefetch;
4. returns hit rates, experts fetched per token, prefetch precision and the link-bound decode
   rate of `offload.decode_tokens_per_s` for each link of `offload.LINKS`, with experts in
   bfloat16 (3 D F 2 bytes each).

`measure_placement` adds, from the same traces (kept in the run's traces.npz), paper A's
expert-parallel question (`placement.py`): the all-to-all dispatch bytes per token left on the
validation traces by a path-aware placement learned on the training traces, on D devices for
every D of `DEVICES` dividing E, against random placement; the cache sweep at every cache size
M = k, 2k, ... < E (prefetch can win only where M > k); and each number's load-matched null
(the same pipeline on i.i.d. traces with the run's per-router loads) and real - null.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from flax import nnx

from moejax.data import pipeline
from moejax.experiments import offload, placement, stats
from moejax.models.weights import load_decoder
from moejax.reporting import plots

CACHE_FRACTIONS = (0.25, 0.5)  # M / E
OFFLOAD_FILE = "offload.json"
TRACES_FILE = "traces.npz"  # a run's training- and validation-split traces
PLACEMENT_FILE = "placement.json"
DEVICES = (2, 4, 8)  # expert-parallel devices D (those dividing E are measured)
NULL = " null"  # metric + NULL: the load-matched null's value; metric + DIFF: real - null
DIFF = " - null"


def routing_traces(model, data_spec, split: str, *, seq_len: int, batch_size: int,
                   batches: int, seed: int) -> np.ndarray:
    """[N, R, k] the experts each token of `batches` batches chose per router (tokens in order
    within each window, windows one after another)."""
    data = iter(pipeline.make_dataset(data_spec, split, seq_len=seq_len, batch_size=batch_size,
                                      seed=seed, shuffle=True))
    route = nnx.jit(lambda model, tokens, segments: model(tokens, segments=segments)[1])
    out = []
    for _ in range(batches):
        batch = next(data)
        record = route(model, batch["tokens"][:, :-1], batch["segments"][:, :-1])
        out.append(np.asarray(record.expert_idx).transpose(1, 0, 2))  # [R, T, k] -> [T, R, k]
    return np.concatenate(out)


def offload_metrics(model, data_spec, *, seq_len: int, batch_size: int, batches: int,
                    seed: int) -> dict:
    """{metric name: value} for one trained model (see the module docstring)."""
    spec = model.spec
    num_experts = spec.moe.routed_experts
    options = dict(seq_len=seq_len, batch_size=batch_size, batches=batches, seed=seed)
    learned = offload.transition_matrix(
        routing_traces(model, data_spec, "train", **options), num_experts)
    held_out = routing_traces(model, data_spec, "validation", **options)
    expert_bytes = 3 * spec.d_model * spec.moe.routed_d_hidden * 2
    capacities = {f"{fraction:g}": max(held_out.shape[2], round(fraction * num_experts))
                  for fraction in CACHE_FRACTIONS}
    return offload.cache_metrics(held_out, num_experts, capacities, learned, expert_bytes)


def measure_run(directory: pathlib.Path, config) -> dict:
    """`offload_metrics` of the finished run in `directory`, kept in its offload.json (measured
    once: a later call reads the file)."""
    path = pathlib.Path(directory) / OFFLOAD_FILE
    if path.exists():
        return json.loads(path.read_text())
    model = load_decoder(directory)
    train = config.train
    metrics = offload_metrics(model, pipeline.data_spec_from_config(config.get("data")),
                              seq_len=train.seq_len, batch_size=train.batch_size,
                              batches=train.eval_batches, seed=config.seed)
    path.write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def record_traces(directory: pathlib.Path, config, model=None) -> dict:
    """{"train": [N, R, k], "validation": [N, R, k], "num_experts", "d_model",
    "expert_bytes"} of the finished run in `directory` (`routing_traces` with the options of
    `measure_run`), kept in its traces.npz: recorded once, a later call reads the file."""
    path = pathlib.Path(directory) / TRACES_FILE
    if not path.exists():
        model = load_decoder(directory) if model is None else model
        spec, train = model.spec, config.train
        options = dict(seq_len=train.seq_len, batch_size=train.batch_size,
                       batches=train.eval_batches, seed=config.seed)
        data_spec = pipeline.data_spec_from_config(config.get("data"))
        splits = {split: routing_traces(model, data_spec, split, **options).astype(np.int16)
                  for split in ("train", "validation")}
        np.savez_compressed(path, **splits, num_experts=spec.moe.routed_experts,
                            d_model=spec.d_model,
                            expert_bytes=3 * spec.d_model * spec.moe.routed_d_hidden * 2)
    with np.load(path) as saved:
        return {key: saved[key] if saved[key].ndim else saved[key].item() for key in saved}


def trace_metrics(train: np.ndarray, held_out: np.ndarray, *, num_experts: int, d_model: int,
                  expert_bytes: float, seed: int = 0) -> dict:
    """{metric name: value} of one pair of splits: per D of `DEVICES` dividing E ("@D<D>"),
    dispatch messages and bytes per token of the "path", "pairs" and "random" placements of
    `placement.placement_traffic`, the fraction of random's bytes the path placement cuts
    ("a2a_cut") and the co-located pair mass of each; then `placement.cache_sweep` at every
    cache size ("@M<M>")."""
    out = {}
    for devices in DEVICES:
        if devices > num_experts or num_experts % devices:
            continue
        moved = placement.placement_traffic(train, held_out, num_experts, devices, seed=seed)
        for arm, traffic in moved.items():
            tag = f"{arm}@D{devices}"
            out[f"a2a_messages/token {tag}"] = traffic.messages_per_token
            out[f"a2a_bytes/token {tag}"] = traffic.bytes_per_token(d_model)
            out[f"colocated {tag}"] = traffic.colocated
        random = moved["random"].messages_per_token
        out[f"a2a_cut @D{devices}"] = (1 - moved["path"].messages_per_token / random
                                       if random else 0.0)
    out.update(placement.cache_sweep(train, held_out, num_experts, expert_bytes))
    return out


def placement_metrics(traces: dict, *, seed: int = 0) -> dict:
    """`trace_metrics` of the run's traces (`record_traces`), each metric m with its
    load-matched null (m + NULL) and the difference real - null (m + DIFF), flat."""
    options = dict(num_experts=int(traces["num_experts"]), d_model=int(traces["d_model"]),
                   expert_bytes=float(traces["expert_bytes"]), seed=seed)
    compared = placement.with_null(lambda train, held_out: trace_metrics(train, held_out,
                                                                         **options),
                                   traces["train"], traces["validation"],
                                   options["num_experts"], seed=seed)
    out = {}
    for key, (real, null, diff) in compared.items():
        out[key], out[key + NULL], out[key + DIFF] = real, null, diff
    return out


def measure_placement(directory: pathlib.Path, config) -> dict:
    """`placement_metrics` of the finished run in `directory` (traces from `record_traces`),
    kept in its placement.json (measured once: a later call reads the file)."""
    path = pathlib.Path(directory) / PLACEMENT_FILE
    if path.exists():
        return json.loads(path.read_text())
    metrics = placement_metrics(record_traces(directory, config), seed=config.seed)
    path.write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def maybe_measure_placement(directory: pathlib.Path, config) -> dict:
    """`measure_placement`, or {} for a run with neither its placement.json, its traces.npz
    nor weights to record them from (e.g. the committed docs/results runs, kept without
    checkpoints)."""
    try:
        return measure_placement(directory, config)
    except FileNotFoundError:
        return {}


def _cell(values) -> str:
    mean, std = stats.mean_std(values)
    return "n/a" if mean != mean else f"{mean:.4g} ± {std:.2g}"


def _tags(placed: dict, prefix: str) -> list[str]:
    """The tags after `prefix` of the real metrics measured for some variant, in order."""
    tags = []
    for metrics in placed.values():
        for key in metrics:
            if key.startswith(prefix) and not key.endswith((NULL, DIFF)):
                tag = key[len(prefix):]
                if tag not in tags:
                    tags.append(tag)
    return tags


def placement_report_lines(placed: dict, suite_dir: pathlib.Path, *,
                           image: str | None = "bytes_moved.png") -> list[str]:
    """The report's expert-parallel and cache-size sections, and DIR/<suite>/bytes_moved.png.

    placed: variant -> metric -> per-seed values (`measure_placement` of each seed's run).
    image: the plot's file name, in `suite_dir` (the lines link it by that name); None: no
      plot.
    """
    by_size = [t for t in _tags(placed, "moved_bytes/token ") if "@M" in t]  # cache_sweep's
    if not (_tags(placed, "a2a_bytes/token path@") or by_size):
        return []  # no run measured (`maybe_measure_placement` answered {})
    nan = [float("nan")]
    lines = ["", "## Expert-parallel traffic", "",
             "Each router's E experts on D devices, E/D each (`moejax/experiments/"
             "placement.py`). Dispatch bytes per token on the validation traces: for each "
             "consecutive pair of routers, one bf16 copy of the hidden state (d_model x 2 bytes) "
             "to every device of the token's next experts that holds it not yet (none of its "
             "current experts). Placements learned on the training traces: path, the fewest "
             "training messages (exact where a router has at most 5,000 balanced layouts, "
             "else local search); pairs, the most co-located consecutive-router pair mass; "
             "random, 8 seeded random placements, averaged. null: the same pipeline on i.i.d. "
             "traces drawn from the run's own per-router expert loads; real - null is what the "
             "routing paths add beyond the loads.", "",
             "| variant | D | path bytes/token | pairs bytes/token | random bytes/token | "
             "cut vs random | path co-located | null path bytes/token | path - null | "
             "cut - null |", "|---" * 10 + "|"]
    counts = sorted(int(tag[1:]) for tag in _tags(placed, "a2a_bytes/token path@"))
    for name, metrics in placed.items():
        for devices in counts:
            path_key = f"a2a_bytes/token path@D{devices}"
            cut = f"a2a_cut @D{devices}"
            cells = [metrics.get(path_key, nan),
                     metrics.get(f"a2a_bytes/token pairs@D{devices}", nan),
                     metrics.get(f"a2a_bytes/token random@D{devices}", nan),
                     metrics.get(cut, nan), metrics.get(f"colocated path@D{devices}", nan),
                     metrics.get(path_key + NULL, nan), metrics.get(path_key + DIFF, nan),
                     metrics.get(cut + DIFF, nan)]
            lines.append(f"| {name} | {devices} | " + " | ".join(map(_cell, cells)) + " |")
    sizes = sorted({int(t.split("@M")[1]) for t in by_size})
    lines += ["", "## Offloaded decoding at every cache size", "",
              "Validation traces replayed with M experts of every router cached (M = k, 2k, ... "
              "< E: prefetch can only win where M > k), LRU and LRU + prefetch of the next "
              "router's k likeliest experts; bytes moved = experts fetched (misses and "
              "prefetches) x bf16 expert bytes. null and real - null as above.", "",
              "| variant | M | policy | hit rate | hit rate - null | bytes moved/token | "
              "bytes - null | prefetch precision | precision - null |", "|---" * 9 + "|"]
    for name, metrics in placed.items():
        for size in sizes:
            for policy in offload.POLICIES:
                tag = f"{policy}@M{size}"
                keys = (f"hit_rate {tag}", f"moved_bytes/token {tag}",
                        f"prefetch_precision {tag}")
                cells = []
                for key in keys:
                    cells += [metrics.get(key, nan), metrics.get(key + DIFF, nan)]
                lines.append(f"| {name} | {size} | {policy} | " + " | ".join(map(_cell, cells))
                             + " |")
    if image is None:
        return lines
    plots.plot_points(
        {f"{name} ({policy})": (sizes, [metrics[f"moved_bytes/token {policy}@M{size}"]
                                        for size in sizes])
         for name, metrics in placed.items() for policy in offload.POLICIES},
        pathlib.Path(suite_dir) / image,
        title="offloaded experts: bytes moved per token (± std over seeds)",
        xlabel="experts cached per router, M", ylabel="bytes moved per token")
    return lines + ["", f"![bytes moved vs cache size]({image})"]


# (metric, lower is better) of the claims judged on real - null (`null_claim_lines`)
NULL_CLAIMS = (("a2a_bytes/token path@D2", True), ("a2a_bytes/token path@D4", True),
               ("a2a_bytes/token path@D8", True), ("a2a_cut @D4", False),
               ("hit_rate lru@M2", False), ("hit_rate prefetch@M4", False),
               ("moved_bytes/token prefetch@M4", True))


def null_claim_lines(placed: dict, reference: str) -> list[str]:
    """A claims table: every other variant against `reference` on each metric of NULL_CLAIMS,
    on the real value and on real - null (the verdict that counts), paired by seed
    (`stats.verdict`)."""
    lines = ["| claim | metric | A - null (mean ± std) | B - null (mean ± std) | "
             "improvement on real ± se | improvement on real - null ± se | verdict on real - "
             "null |", "|---" * 7 + "|"]
    for name in placed:
        if name == reference:
            continue
        for metric, lower in NULL_CLAIMS:
            a, b = placed[name].get(metric + DIFF), placed[reference].get(metric + DIFF)
            if a is None or b is None:
                continue
            _, real, real_se = stats.verdict(placed[name][metric], placed[reference][metric],
                                             lower_is_better=lower)
            label, value, se = stats.verdict(a, b, lower_is_better=lower)
            better = "lowers" if lower else "raises"
            lines.append(f"| {name} {better} {metric} vs {reference} | `{metric}` | {_cell(a)} | "
                         f"{_cell(b)} | {real:+.4g} ± {real_se:.2g} | {value:+.4g} ± {se:.2g} | "
                         f"**{label}** |")
    return lines


def placement_finals(workdir, *, seeds: int, suite: str = "inference", options=None) -> dict:
    """variant -> metric -> per-seed values of `measure_placement` over the finished runs of
    `suite` in the experiment directory `workdir` (traces recorded where not kept yet)."""
    from moejax.experiments.runner import run_dir, suite_config  # runner imports this module
    from moejax.experiments.suites import SUITES, RunOptions

    workdir = pathlib.Path(workdir).resolve()
    options = RunOptions() if options is None else options
    out = {}
    for variant in SUITES[suite]:
        per_seed = []
        for seed in range(seeds):
            config = suite_config(variant, workdir, seed=seed, options=options)
            per_seed.append(measure_placement(run_dir(workdir, config), config))
        out[variant.name] = {key: [m[key] for m in per_seed] for key in per_seed[0]}
    return out


def write_placement_results(workdir, path, *, seeds: int, suite: str = "inference",
                            options=None, plot: bool = True) -> pathlib.Path:
    """Writes `path` (markdown) and, with `plot`, its plot beside it (<stem>_bytes_moved.png):
    the traffic and cache-size tables of `placement_report_lines` and `null_claim_lines`
    against the suite's first variant, for the runs of `placement_finals`."""
    path = pathlib.Path(path)
    placed = placement_finals(workdir, seeds=seeds, suite=suite, options=options)
    reference = next(iter(placed))
    lines = [f"# Path-aware expert placement: the {suite} suite", "",
             f"{len(placed)} variants x {seeds} seeds; cells are mean ± sample std over seeds. "
             "Method: docs/methods.md, \"Path-aware expert placement\"; code: "
             "`moejax/experiments/placement.py`, `inference.measure_placement`.", "",
             "## Claims on the difference from the load-matched null", "",
             "Paired by seed; verdict rule: `moejax/experiments/stats.py`. A lower "
             "real - null means the routing paths, beyond the loads, cut the metric.", ""]
    lines += null_claim_lines(placed, reference)
    lines += placement_report_lines(placed, path.parent,
                                    image=f"{path.stem}_bytes_moved.png" if plot else None)
    path.write_text("\n".join(lines) + "\n")
    return path
