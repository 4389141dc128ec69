"""Experiment runner: a suite of matched variants over seeds, its report and the summary.

Each run trains in DIR/runs/<config hash>/seed_<i> (finished runs are skipped, so an interrupted
suite continues where it stopped, and a configuration two suites share is trained once); the
report DIR/<suite>/report.md has, per variant, the mean
and standard deviation over seeds of the final numbers, each claim's verdict
(`stats.py`), the side-by-side plot and links to every seed-0 run report;
DIR/summary.md lists every claim of every suite run so far in one table.
Suites and scales are in `suites.py`; the command is `moejax/cli/experiment.py`.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib

import numpy as np

from moejax.experiments import inference, offload, stats
from moejax.experiments.suites import CLAIMS, OFFLOAD_SUITES, SUITES, variant_config
from moejax.options import flat_config
from moejax.reporting import plots
from moejax.reporting.metrics import METRICS_FILE, read_metrics
from moejax.train import checkpoint
from moejax.train.step_time import compiled_step, interleaved_ms
from moejax.train.trainer import train_and_evaluate

STEP_TIME_FILE = "step_time.json"
STEP_TIME_ROUNDS = {False: 10, True: 2}  # interleaved rounds per step-time claim (quick: 2)

COLUMNS = (("val_loss", "val loss"), ("val_perplexity", "val ppl"),
           ("routing_entropy", "routing entropy"), ("specialization", "specialization"),
           ("pathway_entropy", "pathway entropy"), ("domain_nmi", "domain NMI"),
           ("load_cv", "load CV"), ("dropped_fraction", "dropped"), ("step_ms", "step ms"),
           ("top1_disabled_increase", "top-1 off: +val loss"),
           ("eval_dropped_top1_disabled", "top-1 off: dropped"))


def config_differences(suite: str, *, quick: bool = False, config_dir=None, extra=None) -> dict:
    """variant name -> {dotted key: value} where its config differs from the first variant's."""
    variants = SUITES[suite]
    options = dict(seed=0, quick=quick, config_dir=config_dir, extra=extra)
    first = flat_config(variant_config(variants[0], **options))
    out = {}
    for variant in variants:
        config = flat_config(variant_config(variant, **options))
        out[variant.name] = {key: config.get(key) for key in sorted(set(first) | set(config))
                             if config.get(key) != first.get(key)}
    return out


# Keys that change what a run writes or shows, not what it computes: left out of the run hash.
REPORTING_KEYS = frozenset({"seed", "train.report", "train.progress", "train.tensorboard"})


def run_dir(workdir: pathlib.Path, config) -> pathlib.Path:
    """DIR/runs/<hash of the resolved config>/seed_<seed>: identical runs of different suites
    (e.g. the load-balance-only arm) are trained once, and all seeds of a variant share one
    hash (seed 0, which also writes a run report, included). Options that are unset (None or
    empty) are left out, so adding an option whose default is off keeps every run's key."""
    settings = {k: v for k, v in flat_config(config).items()
                if k not in REPORTING_KEYS and v is not None and v != () and v != []}
    if settings.get("train.init_from"):  # a pretrained run of this DIR: keyed relative to it
        source = pathlib.Path(settings["train.init_from"])
        root = pathlib.Path(workdir).resolve()
        if source.is_relative_to(root):
            settings["train.init_from"] = source.relative_to(root).as_posix()
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    return workdir / "runs" / digest.hexdigest()[:12] / f"seed_{config.seed}"


EXPORT_DIR = "export"  # a pretraining run's exported weights, in its run directory


def suite_config(variant, workdir, *, seed: int, quick: bool = False, config_dir=None,
                 extra=None):
    """`variant_config`, and for a fine-tuning variant `train.init_from` set to the export of
    its pretraining variant's seed-0 run in DIR (`pretrain`)."""
    config = variant_config(variant, seed=seed, quick=quick, config_dir=config_dir, extra=extra)
    if variant.init_from is not None:
        source = suite_config(variant.init_from, workdir, seed=0, quick=quick,
                              config_dir=config_dir, extra=extra)
        config.train.init_from = str(run_dir(pathlib.Path(workdir).resolve(), source)
                                     / EXPORT_DIR)
    return config


def pretrain(suite: str, variant, workdir: pathlib.Path, **options) -> None:
    """Trains (unless finished) and exports the seed-0 run of `variant`, the pretraining that
    fine-tuning variants start from."""
    config = suite_config(variant, workdir, seed=0, **options)
    directory = run_dir(workdir, config)
    _label_run(directory.parent, f"{suite}: {variant.name} (pretraining)")
    if not _finished(directory, config.train.steps):
        print(f"[{suite}] pretraining {variant.name} -> {directory}", flush=True)
        train_and_evaluate(config, directory)
    if not (directory / EXPORT_DIR / "config.json").exists():
        checkpoint.export(directory, directory / EXPORT_DIR, overwrite=True)


def _finished(directory: pathlib.Path, steps: int) -> bool:
    path = directory / METRICS_FILE
    if not path.exists():
        return False
    rows = read_metrics(path)
    return bool(rows) and rows[-1]["step"] >= steps and "val_loss" in rows[-1]


def _label_run(directory: pathlib.Path, label: str) -> None:
    """Notes in DIR/runs/<hash>/variants.txt which suite variants use this configuration."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "variants.txt"
    labels = path.read_text().splitlines() if path.exists() else []
    if label not in labels:
        path.write_text("\n".join([*labels, label]) + "\n")


def measure_step_times(suite: str, workdir, *, quick: bool = False, config_dir=None,
                       extra=None) -> dict:
    """The step-time claims' evidence: the two variants of each such claim (seed 0), compiled,
    then timed interleaved (`moejax/train/step_time.py`); {variant: [ms per round]}, kept in
    DIR/<suite>/step_time.json and measured again only when a variant's config changed."""
    path = pathlib.Path(workdir).resolve() / suite / STEP_TIME_FILE
    saved = json.loads(path.read_text()) if path.exists() else {}
    names = sorted({name for claim in CLAIMS[suite] if claim.metric == "step_ms_overhead"
                    for name in (claim.better, claim.than)})
    variants = {v.name: v for v in SUITES[suite]}
    configs = {name: suite_config(variants[name], path.parent.parent, seed=0, quick=quick,
                                  config_dir=config_dir, extra=extra) for name in names}
    keys = {name: run_dir(path.parent.parent, config).parent.name
            for name, config in configs.items()}
    if names and saved.get("configs") != keys:
        print(f"[{suite}] timing {', '.join(names)} interleaved", flush=True)
        steps = {name: compiled_step(config) for name, config in configs.items()}
        saved = {"configs": keys, "ms": interleaved_ms(steps, STEP_TIME_ROUNDS[quick])}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(saved, indent=1) + "\n")
    return saved.get("ms", {})


def run_suite(suite: str, workdir, *, seeds: int, quick: bool = False, config_dir=None,
              extra=None) -> dict:
    """Trains every (variant, seed) not yet finished, then times the step-time claims'
    variants; returns variant name -> rows per seed."""
    workdir = pathlib.Path(workdir).resolve()
    options = dict(quick=quick, config_dir=config_dir, extra=extra)
    runs = {}
    for variant in SUITES[suite]:
        if variant.init_from is not None:
            pretrain(suite, variant.init_from, workdir, **options)
        runs[variant.name] = []
        for seed in range(seeds):
            config = suite_config(variant, workdir, seed=seed, **options)
            config.train.report = config.train.report and seed == 0
            directory = run_dir(workdir, config)
            _label_run(directory.parent, f"{suite}: {variant.name}")
            if not _finished(directory, config.train.steps):
                print(f"[{suite}] {variant.name} seed {seed} -> {directory}", flush=True)
                train_and_evaluate(config, directory)
            if suite in OFFLOAD_SUITES:
                inference.measure_run(directory, config)
            runs[variant.name].append(read_metrics(directory / METRICS_FILE))
    measure_step_times(suite, workdir, quick=quick, config_dir=config_dir, extra=extra)
    return runs


def _cell(values) -> str:
    mean, std = stats.mean_std(values)
    return "n/a" if mean != mean else f"{mean:.4g} ± {std:.2g}"


def claim_results(suite: str, finals: dict) -> list[tuple]:
    """(claim, values of A, values of B, improvement text, verdict) for each claim of `suite`;
    `finals` is variant name -> metric -> per-seed values."""
    out = []
    for claim in CLAIMS[suite]:
        if claim.metric == "step_ms_overhead":  # interleaved rounds, paired by round
            a = finals[claim.better].get("step_ms_interleaved", [])
            b = finals[claim.than].get("step_ms_interleaved", [])
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
    found = [(suite, suite) for suite in suites if (workdir / suite / "finals.json").exists()]
    for child in sorted(p for p in workdir.iterdir() if p.is_dir()):
        found += [(f"{child.name}/{suite}", suite) for suite in suites
                  if (child / suite / "finals.json").exists()]
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
        finals = json.loads((workdir / where / "finals.json").read_text())
        for claim, a, b, shown, label in claim_results(suite, finals):
            lines.append(f"| [{where}]({where}/report.md) | {claim.text} | {shown} | "
                         f"**{label}** |")
            if claim.metric == "val_loss" and len(a) == len(b) > 1:
                sd = float(np.std(np.subtract(b, a), ddof=1))
                power.append(f"| {where} | {claim.text} | {sd:.2g} | "
                             f"{stats.seeds_needed(stats.PAPER_A_LOSS_EFFECT, sd)} |")
    lines += power
    path = workdir / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _offload_finals(suite, workdir, runs, quick, config_dir, extra) -> dict:
    """variant -> offload metric -> per-seed values, from each run's offload.json."""
    if suite not in OFFLOAD_SUITES:
        return {}
    out = {}
    for variant in SUITES[suite]:
        per_seed = []
        for seed in range(len(runs[variant.name])):
            config = suite_config(variant, workdir, seed=seed, quick=quick,
                                  config_dir=config_dir, extra=extra)
            per_seed.append(inference.measure_run(run_dir(workdir, config), config))
        out[variant.name] = {key: [m[key] for m in per_seed] for key in per_seed[0]}
    return out


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


def _pretrained_lines(suite: str, workdir: pathlib.Path, **options) -> list[str]:
    """The pretraining runs the suite's variants start from: steps, domains, final val loss."""
    lines = []
    pretrained = {v.init_from.name: v.init_from for v in SUITES[suite] if v.init_from}
    for variant in pretrained.values():
        config = suite_config(variant, workdir, seed=0, **options)
        directory = run_dir(workdir, config)
        val_loss, _ = plots.last_value(read_metrics(directory / METRICS_FILE), "val_loss")
        excluded = ", ".join(config.data.exclude_domains) or "none"
        lines += ["", f"Every variant starts from [{variant.name}]"
                  f"(../{(directory / 'report.md').relative_to(workdir)}): seed 0, "
                  f"{config.train.steps} steps on every domain but {excluded}, final validation "
                  f"loss {val_loss:.4g} on those domains; its export is `train.init_from`."]
    return lines


def write_suite_report(suite: str, workdir, runs: dict, *, quick: bool = False,
                       config_dir=None, extra=None) -> pathlib.Path:
    """Writes DIR/<suite>/report.md and DIR/<suite>/variants.png; returns the report path."""
    suite_dir = pathlib.Path(workdir).resolve() / suite
    suite_dir.mkdir(parents=True, exist_ok=True)
    finals = {name: {} for name in runs}
    output_cosine = []  # variants whose record holds output cosines (the orthogonality loss)
    for variant in SUITES[suite]:
        domains = variant.overrides.get("data.domains", ())
        per_seed = [stats.run_metrics(rows, domains) for rows in runs[variant.name]]
        finals[variant.name] = {key: [m[key] for m in per_seed] for key in per_seed[0]}
        if variant.overrides.get("loss.orth", 0) > 0:
            finals[variant.name]["specialization"] = [math.nan] * len(per_seed)
            output_cosine.append(variant.name)
    offloaded = _offload_finals(suite, suite_dir.parent, runs, quick, config_dir, extra)
    for name, metrics in offloaded.items():
        finals[name].update(metrics)
    step_times = suite_dir / STEP_TIME_FILE
    if step_times.exists():  # per-round times of the step-time claims' variants
        for name, ms in json.loads(step_times.read_text())["ms"].items():
            finals[name]["step_ms_interleaved"] = ms
    seeds = len(next(iter(runs.values())))
    per_domain = sorted({key for name in runs for key in finals[name]
                         if key.startswith("val_loss ")})
    columns = [(key, label)  # those measured for some variant
               for key, label in [*COLUMNS, *((key, key.replace("_", " ")) for key in per_domain)]
               if any(v == v for name in runs for v in finals[name].get(key, []))]
    scale = "quick (toy) scale" if quick else "default scale"
    scale += "".join(f", `{key}={value}`" for key, value in (extra or {}).items())
    lines = [f"# Experiment: {suite}", "",
             f"{len(runs)} variants x {seeds} seeds, {scale}"
             f"; cells are mean ± sample std over seeds (final evaluation; routing numbers from "
             "the last logged training batch, averaged over routers).", "",
             "| variant | " + " | ".join(label for _, label in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for name in runs:
        cells = [_cell(finals[name].get(key, [math.nan])) for key, _ in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += _pretrained_lines(suite, suite_dir.parent, quick=quick, config_dir=config_dir,
                               extra=extra)
    if output_cosine:
        lines += ["", f"Specialization is n/a for {', '.join(output_cosine)}: with the "
                  "orthogonality loss on, the record holds cosines of expert outputs, not of z."]
    lines += ["", "## Claims", "", "Improvements are paired by seed (the arms share each seed's "
              "initial weights and data order); verdict rule: `moejax/experiments/stats.py`.",
              ""]
    lines += _claim_rows(suite, finals)
    if offloaded:
        lines += _offload_rows(offloaded)
        plots.plot_points(
            {f"{name} ({policy})": (inference.CACHE_FRACTIONS,
                                    [metrics[f"hit_rate {policy}@{f:g}"]
                                     for f in inference.CACHE_FRACTIONS])
             for name, metrics in offloaded.items() for policy in ("lru", "prefetch")},
            suite_dir / "hit_rate.png", title="offloaded experts: hit rate (± std over seeds)",
            xlabel="experts kept in fast memory, M / E", ylabel="hit rate")
        lines += ["", "![hit rate vs cache size](hit_rate.png)"]
    lines += ["", "## What differs between the variants", ""]
    differences = config_differences(suite, quick=quick, config_dir=config_dir, extra=extra)
    for name, diff in differences.items():
        shown = ", ".join(f"`{k}={v}`" for k, v in diff.items()) or "(the reference)"
        lines.append(f"- {name}: {shown}")
    reason = plots.plot_variants(runs, suite_dir / "variants.png")
    lines += ["", "## Curves", "", reason or "![variants](variants.png)", ""]
    for variant in SUITES[suite]:
        config = suite_config(variant, suite_dir.parent, seed=0, quick=quick,
                              config_dir=config_dir, extra=extra)
        report = run_dir(suite_dir.parent, config) / "report.md"
        if report.exists():
            lines.append(f"- [{variant.name}, seed 0](../{report.relative_to(suite_dir.parent)})")
    path = suite_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (suite_dir / "finals.json").write_text(json.dumps(finals, indent=1) + "\n")
    return path
