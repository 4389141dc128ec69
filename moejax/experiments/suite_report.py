"""Experiment reports: each suite's DIR/<suite>/report.md, and DIR/summary.md over the suites.

A suite's report has, per variant, the mean and standard deviation over seeds of the final
numbers (`stats.run_metrics`), each claim's verdict (`stats.py`), the side-by-side plot and
links to every seed-0 run report; DIR/<suite>/finals.json keeps the per-seed final numbers.
DIR/summary.md lists every claim of every suite run so far in one table. The runs themselves
are trained by `runner.py`.
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np

from moejax.experiments import inference, offload, stats
from moejax.experiments.runner import STEP_TIME_FILE, run_dir, suite_config
from moejax.experiments.suites import (
    CLAIMS,
    OFFLOAD_SUITES,
    SUITES,
    RunOptions,
    config_differences,
)
from moejax.reporting import plots
from moejax.reporting.metrics import METRICS_FILE, VAL_LOSS, last_value, read_metrics

# (final number, column label) of the report's table, in order; per-domain validation losses
# (`stats.domain_val_loss`) follow
COLUMNS = ((stats.VAL_LOSS, "val loss"), (stats.VAL_PERPLEXITY, "val ppl"),
           (stats.ROUTING_ENTROPY, "routing entropy"), (stats.SPECIALIZATION, "specialization"),
           (stats.PATHWAY_ENTROPY, "pathway entropy"), (stats.DOMAIN_NMI, "domain NMI"),
           (stats.LOAD_CV, "load CV"), (stats.DROPPED_FRACTION, "dropped"),
           (stats.STEP_MS, "step ms"), (stats.TOP1_DISABLED_INCREASE, "top-1 off: +val loss"),
           (stats.EVAL_DROPPED_TOP1_DISABLED, "top-1 off: dropped"))
_DOMAIN_LOSS_PREFIX = stats.domain_val_loss("")
FINALS_FILE = "finals.json"


def _cell(values) -> str:
    mean, std = stats.mean_std(values)
    return "n/a" if mean != mean else f"{mean:.4g} ± {std:.2g}"


def claim_results(suite: str, finals: dict) -> list[tuple]:
    """(claim, values of A, values of B, improvement text, verdict) for each claim of `suite`;
    `finals` is variant name -> final number -> per-seed values."""
    out = []
    for claim in CLAIMS[suite]:
        if claim.metric == stats.STEP_MS_OVERHEAD:  # interleaved rounds, paired by round
            a = finals[claim.better].get(stats.STEP_MS_INTERLEAVED, [])
            b = finals[claim.than].get(stats.STEP_MS_INTERLEAVED, [])
            label, value, se = stats.overhead_verdict(a, b)
            shown = f"overhead {value:+.2%} ± {se:.2%} ({len(a)} interleaved rounds)"
        else:
            a, b = finals[claim.better][claim.metric], finals[claim.than][claim.metric]
            label, value, se = stats.verdict(a, b, lower_is_better=claim.lower_is_better)
            shown = f"{value:+.4g} ± {se:.2g}"
        out.append((claim, a, b, shown, label))
    return out


def _claim_rows(suite: str, finals: dict) -> list[str]:
    lines = ["| claim | A (mean ± std) | B (mean ± std) | improvement ± se | verdict |",
             "|---|---|---|---|---|"]
    for claim, a, b, shown, label in claim_results(suite, finals):
        lines.append(f"| {claim.text} ({claim.better} vs {claim.than}) | {_cell(a)} | "
                     f"{_cell(b)} | {shown} | **{label}** |")
    return lines


def _finished_suites(workdir: pathlib.Path, suites) -> list[tuple[str, str]]:
    """(label, suite) of every DIR/<suite>/finals.json, then of every DIR/<name>/<suite>/
    finals.json (another results directory kept inside DIR, e.g. a longer run), labelled
    "<name>/<suite>"."""
    found = [(suite, suite) for suite in suites if (workdir / suite / FINALS_FILE).exists()]
    for child in sorted(p for p in workdir.iterdir() if p.is_dir()):
        found += [(f"{child.name}/{suite}", suite) for suite in suites
                  if (child / suite / FINALS_FILE).exists()]
    return found


def write_summary(workdir, suites) -> pathlib.Path:
    """DIR/summary.md: every claim of the suites whose DIR/<suite>/finals.json or
    DIR/<name>/<suite>/finals.json exists, one row each (improvement paired by seed ± its
    standard error, verdict), linking the reports."""
    workdir = pathlib.Path(workdir).resolve()
    lines = ["# Experiment summary", "",
             "One row per claim; the numbers are the improvement of A over B paired by seed ± "
             "its standard error (`moejax/experiments/stats.py`). Details: each suite's "
             "report.", "", "| suite | claim | improvement ± se | verdict |", "|---|---|---|---|"]
    power = ["", "## Power", "",
             f"Seeds per arm the paired test needs to detect paper A's effect on validation loss "
             f"({stats.PAPER_A_LOSS_EFFECT:.4f} nats: perplexity 12.50 -> 12.27) with 80% "
             "power, from each claim's measured spread of seed-paired differences "
             "(`stats.seeds_needed`).", "",
             "| suite | claim | paired sd (nats) | seeds needed |", "|---|---|---|---|"]
    for where, suite in _finished_suites(workdir, suites):
        finals = json.loads((workdir / where / FINALS_FILE).read_text())
        for claim, a, b, shown, label in claim_results(suite, finals):
            lines.append(f"| [{where}]({where}/report.md) | {claim.text} | {shown} | "
                         f"**{label}** |")
            if claim.metric == stats.VAL_LOSS and len(a) == len(b) > 1:
                sd = float(np.std(np.subtract(b, a), ddof=1))
                power.append(f"| {where} | {claim.text} | {sd:.2g} | "
                             f"{stats.seeds_needed(stats.PAPER_A_LOSS_EFFECT, sd)} |")
    lines += power
    path = workdir / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run_finals(suite: str, runs: dict) -> tuple[dict, list[str]]:
    """(variant -> final number -> per-seed values, the variants whose record holds output
    cosines: the orthogonality loss, which leaves specialization n/a)."""
    finals = {name: {} for name in runs}
    output_cosine = []
    for variant in SUITES[suite]:
        domains = variant.overrides.get("data.domains", ())
        per_seed = [stats.run_metrics(rows, domains) for rows in runs[variant.name]]
        finals[variant.name] = {key: [m[key] for m in per_seed] for key in per_seed[0]}
        if variant.overrides.get("loss.orth", 0) > 0:
            finals[variant.name][stats.SPECIALIZATION] = [math.nan] * len(per_seed)
            output_cosine.append(variant.name)
    return finals, output_cosine


def _offload_finals(suite: str, workdir: pathlib.Path, runs: dict, options: RunOptions) -> dict:
    """variant -> offload metric -> per-seed values, from each run's offload.json."""
    if suite not in OFFLOAD_SUITES:
        return {}
    out = {}
    for variant in SUITES[suite]:
        per_seed = []
        for seed in range(len(runs[variant.name])):
            config = suite_config(variant, workdir, seed=seed, options=options)
            per_seed.append(inference.measure_run(run_dir(workdir, config), config))
        out[variant.name] = {key: [m[key] for m in per_seed] for key in per_seed[0]}
    return out


def _add_step_times(finals: dict, path: pathlib.Path) -> None:
    """Adds the step-time claims' per-round times (DIR/<suite>/step_time.json, if measured)."""
    if path.exists():
        for name, ms in json.loads(path.read_text())["ms"].items():
            finals[name][stats.STEP_MS_INTERLEAVED] = ms


def _table_lines(suite: str, runs: dict, finals: dict, options: RunOptions) -> list[str]:
    """The header and the table of final numbers: one row per variant, one column per final
    number measured for some variant."""
    per_domain = sorted({key for name in runs for key in finals[name]
                         if key.startswith(_DOMAIN_LOSS_PREFIX)})
    columns = [(key, label)
               for key, label in [*COLUMNS, *((key, key.replace("_", " ")) for key in per_domain)]
               if any(v == v for name in runs for v in finals[name].get(key, []))]
    seeds = len(next(iter(runs.values())))
    scale = "quick (toy) scale" if options.quick else "default scale"
    scale += "".join(f", `{key}={value}`" for key, value in options.overrides.items())
    lines = [f"# Experiment: {suite}", "",
             f"{len(runs)} variants x {seeds} seeds, {scale}"
             f"; cells are mean ± sample std over seeds (final evaluation; routing numbers from "
             "the last logged training batch, averaged over routers).", "",
             "| variant | " + " | ".join(label for _, label in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for name in runs:
        cells = [_cell(finals[name].get(key, [math.nan])) for key, _ in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _offload_rows(offloaded: dict) -> list[str]:
    """The offloading table: per variant, cache size and policy, mean ± std over seeds."""
    links = list(offload.LINKS)
    lines = ["", "## Offloaded decoding", "",
             "Validation-split routing replayed with each router keeping M of its E experts in "
             "fast memory (`moejax/experiments/offload.py`; transitions learned on training-split "
             "traces). tokens/s: link-bound (every fetched expert crosses the link, bf16).", "",
             "| variant | M/E | policy | hit rate | experts fetched / token | prefetch precision | "
             + " | ".join(f"tokens/s {link}" for link in links) + " |",
             "|---" * (6 + len(links)) + "|"]
    for name, metrics in offloaded.items():
        for fraction in inference.CACHE_FRACTIONS:
            for policy in offload.POLICIES:
                tag = f"{policy}@{fraction:g}"
                cells = [_cell(metrics[f"hit_rate {tag}"]), _cell(metrics[f"fetched/token {tag}"]),
                         _cell(metrics.get(f"prefetch_precision {tag}", [math.nan]))]
                cells += [_cell(metrics[f"tokens/s {link} {tag}"]) for link in links]
                lines.append(f"| {name} | {fraction:g} | {policy} | " + " | ".join(cells) + " |")
    return lines


def _hit_rate_lines(offloaded: dict, suite_dir: pathlib.Path) -> list[str]:
    """Draws DIR/<suite>/hit_rate.png (hit rate vs cache size per variant and policy)."""
    plots.plot_points(
        {f"{name} ({policy})": (inference.CACHE_FRACTIONS,
                                [metrics[f"hit_rate {policy}@{f:g}"]
                                 for f in inference.CACHE_FRACTIONS])
         for name, metrics in offloaded.items() for policy in ("lru", "prefetch")},
        suite_dir / "hit_rate.png", title="offloaded experts: hit rate (± std over seeds)",
        xlabel="experts kept in fast memory, M / E", ylabel="hit rate")
    return ["", "![hit rate vs cache size](hit_rate.png)"]


def _pretrained_lines(suite: str, workdir: pathlib.Path, options: RunOptions) -> list[str]:
    """The pretraining runs the suite's variants start from: steps, domains, final val loss."""
    lines = []
    pretrained = {v.init_from.name: v.init_from for v in SUITES[suite] if v.init_from}
    for variant in pretrained.values():
        config = suite_config(variant, workdir, seed=0, options=options)
        directory = run_dir(workdir, config)
        val_loss, _ = last_value(read_metrics(directory / METRICS_FILE), VAL_LOSS)
        excluded = ", ".join(config.data.exclude_domains) or "none"
        lines += ["", f"Every variant starts from [{variant.name}]"
                  f"(../{(directory / 'report.md').relative_to(workdir)}): seed 0, "
                  f"{config.train.steps} steps on every domain but {excluded}, final validation "
                  f"loss {val_loss:.4g} on those domains; its export is `train.init_from`."]
    return lines


def _difference_lines(suite: str, options: RunOptions) -> list[str]:
    lines = ["", "## What differs between the variants", ""]
    for name, diff in config_differences(suite, options).items():
        shown = ", ".join(f"`{k}={v}`" for k, v in diff.items()) or "(the reference)"
        lines.append(f"- {name}: {shown}")
    return lines


def _run_report_links(suite: str, workdir: pathlib.Path, options: RunOptions) -> list[str]:
    """Links to the seed-0 run reports that exist."""
    lines = []
    for variant in SUITES[suite]:
        config = suite_config(variant, workdir, seed=0, options=options)
        report = run_dir(workdir, config) / "report.md"
        if report.exists():
            lines.append(f"- [{variant.name}, seed 0](../{report.relative_to(workdir)})")
    return lines


def write_suite_report(suite: str, workdir, runs: dict,
                       options: RunOptions = RunOptions()) -> pathlib.Path:
    """Writes DIR/<suite>/report.md, variants.png (and for an offloading suite hit_rate.png)
    and finals.json; returns the report path.

    runs: variant name -> logged rows of each seed (`runner.run_suite`).
    """
    suite_dir = pathlib.Path(workdir).resolve() / suite
    suite_dir.mkdir(parents=True, exist_ok=True)
    finals, output_cosine = _run_finals(suite, runs)
    offloaded = _offload_finals(suite, suite_dir.parent, runs, options)
    for name, metrics in offloaded.items():
        finals[name].update(metrics)
    _add_step_times(finals, suite_dir / STEP_TIME_FILE)
    lines = _table_lines(suite, runs, finals, options)
    lines += _pretrained_lines(suite, suite_dir.parent, options)
    if output_cosine:
        lines += ["", f"Specialization is n/a for {', '.join(output_cosine)}: with the "
                  "orthogonality loss on, the record holds cosines of expert outputs, not of z."]
    lines += ["", "## Claims", "", "Improvements are paired by seed (the arms share each seed's "
              "initial weights and data order); verdict rule: `moejax/experiments/stats.py`.",
              ""]
    lines += _claim_rows(suite, finals)
    if offloaded:
        lines += _offload_rows(offloaded) + _hit_rate_lines(offloaded, suite_dir)
    lines += _difference_lines(suite, options)
    reason = plots.plot_variants(runs, suite_dir / "variants.png")
    lines += ["", "## Curves", "", reason or "![variants](variants.png)", ""]
    lines += _run_report_links(suite, suite_dir.parent, options)
    path = suite_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (suite_dir / FINALS_FILE).write_text(json.dumps(finals, indent=1) + "\n")
    return path
