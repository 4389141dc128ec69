"""Each suite's report: DIR/<suite>/report.md, with DIR/<suite>/finals.json and scale.json.

A suite's report has, per variant, the mean and standard deviation over seeds of the final
numbers (`stats.run_metrics`), each claim's paired test taken alone (`stats.py`), the
side-by-side plot and links to every seed-0 run report; DIR/<suite>/finals.json keeps the
per-seed final numbers and DIR/<suite>/scale.json the steps, seeds and tokenizer. The claims
(`claim_results`) and their table are shared with `summary.py`, which builds DIR/summary.md
over the suites and refreshes the reports' Claims sections from finals.json alone. The runs
themselves are trained by `runner.py`.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import NamedTuple

from moejax.experiments import inference, offload, stats
from moejax.experiments.runner import STEP_TIME_FILE, run_dir, suite_config
from moejax.experiments.suites import (
    CLAIMS,
    OFFLOAD_SUITES,
    SUITES,
    Claim,
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
SCALE_FILE = "scale.json"  # DIR/<suite>/scale.json: steps, seeds, tokenizer (`_scale`)


def _cell(values) -> str:
    if not len(values):
        return "n/a"
    mean, std = stats.mean_std(values)
    return "n/a" if mean != mean else f"{mean:.4g} ± {std:.2g}"


class ClaimResult(NamedTuple):
    """One claim answered from one results directory: the arms' per-seed values (per round for
    the step-time claim), the paired test, and the equivalence margin (None: no target)."""

    claim: Claim
    a: list
    b: list
    test: stats.PairedTest
    margin: float | None


def claim_margin(claim: Claim, tokenizer: str = "bytes") -> float | None:
    """The claim's target effect in the run's unit (`stats.loss_margin`), or None."""
    return None if claim.paper_effect is None else stats.loss_margin(claim.paper_effect,
                                                                     tokenizer)


def claim_test(claim: Claim, finals: dict) -> tuple[list, list, stats.PairedTest]:
    """(values of A, values of B, paired test) of `claim` from `finals` (variant name -> final
    number -> per-seed values); arms of unequal length are paired over their common seeds."""
    if claim.metric == stats.STEP_MS_OVERHEAD:  # interleaved rounds, paired by round
        a = finals.get(claim.better, {}).get(stats.STEP_MS_INTERLEAVED, [])
        b = finals.get(claim.than, {}).get(stats.STEP_MS_INTERLEAVED, [])
        n = min(len(a), len(b))
        return a, b, stats.overhead_test(a[:n], b[:n])
    a = finals.get(claim.better, {}).get(claim.metric, [])
    b = finals.get(claim.than, {}).get(claim.metric, [])
    n = min(len(a), len(b))
    return a, b, stats.paired_test(a[:n], b[:n], lower_is_better=claim.lower_is_better)


def claim_results(suite: str, finals: dict, tokenizer: str = "bytes") -> list[ClaimResult]:
    """A `ClaimResult` for each claim of `suite` (`finals`: variant -> number -> per seed)."""
    return [ClaimResult(claim, *claim_test(claim, finals), claim_margin(claim, tokenizer))
            for claim in CLAIMS[suite]]


def _g(value: float, digits: int = 3) -> str:
    """A signed number of `digits` significant digits, or "n/a"."""
    return "n/a" if not math.isfinite(value) else f"{value:+.{digits}g}"


def _p(value: float) -> str:
    """A p-value of 2 significant digits, or "n/a"."""
    return "n/a" if not math.isfinite(value) else f"{value:.2g}"


def shown_effect(result: ClaimResult) -> str:
    """The improvement and its 95% interval; for the step-time claim the overhead instead."""
    test = result.test
    if result.claim.metric == stats.STEP_MS_OVERHEAD:
        mean, (low, high) = stats.OVERHEAD_LIMIT - test.improvement, test.ci
        if not math.isfinite(mean):
            return f"overhead n/a ({test.n} interleaved rounds)"
        limit = stats.OVERHEAD_LIMIT
        return (f"overhead {mean:+.2%} [{limit - high:+.2%}, {limit - low:+.2%}] "
                f"({test.n} interleaved rounds)")
    return f"{_g(test.improvement)} [{_g(test.ci[0])}, {_g(test.ci[1])}]"


def _margin_cell(margin: float | None, p: float) -> str:
    """The equivalence p-value and its margin, or "–" for a claim without a target."""
    return "–" if margin is None else f"{_p(p)} (±{margin:.2g})"


def _claim_rows(results: list[ClaimResult]) -> list[str]:
    """The suite report's claim table: each claim alone, unadjusted."""
    lines = ["| claim | A (mean ± std) | B (mean ± std) | improvement [95% CI] | p | "
             "equivalence p (margin) | verdict alone |", "|---|---|---|---|---|---|---|"]
    for result in results:
        row = stats.family_verdicts([result.test], [result.margin])[0]
        claim = result.claim
        lines.append(f"| {claim.text} ({claim.better} vs {claim.than}) | {_cell(result.a)} | "
                     f"{_cell(result.b)} | {shown_effect(result)} | {_p(result.test.p_value)} | "
                     f"{_margin_cell(result.margin, row['p_equivalence'])} | "
                     f"**{row['verdict']}** |")
    return lines


CLAIMS_TEXT = ("Improvements are paired by seed (the arms share each seed's initial weights and "
               "data order; the step-time claim by interleaved round), with their 95% interval "
               "and two-sided p. Equivalence p: two one-sided tests against the paper's effect "
               "in the run's unit (± margin; per byte for byte-level runs). Each verdict here "
               "takes the claim alone at 5%; the verdicts to cite are the summary's, "
               "Holm-adjusted across its family. Rules: `moejax/experiments/stats.py`.")


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
            directory = run_dir(workdir, config)
            metrics = dict(inference.measure_run(directory, config))
            metrics.update(inference.maybe_measure_placement(directory, config))
            per_seed.append(metrics)
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
        excluded = ", ".join(config.data.exclude_domains)
        lines += ["", f"Every variant starts from [{variant.name}]"
                  f"(../{(directory / 'report.md').relative_to(workdir)}): seed 0, "
                  f"{config.train.steps} steps on every domain"
                  + (f" but {excluded}" if excluded else "")
                  + f", final validation loss {val_loss:.4g} on those domains; its export"
                  + (", upcycled (`moejax.models.upcycle`)," if any(
                      v.upcycle for v in SUITES[suite] if v.init_from is variant) else "")
                  + " is `train.init_from`."]
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
    tokenizer = suite_config(SUITES[suite][0], suite_dir.parent, seed=0,
                             options=options).data.tokenizer or "bytes"
    lines += ["", "## Claims", "", CLAIMS_TEXT, ""]
    lines += _claim_rows(claim_results(suite, finals, tokenizer))
    if offloaded:
        lines += _offload_rows(offloaded) + _hit_rate_lines(offloaded, suite_dir)
        lines += inference.placement_report_lines(offloaded, suite_dir)
    lines += _difference_lines(suite, options)
    reason = plots.plot_variants(runs, suite_dir / "variants.png")
    lines += ["", "## Curves", "", reason or "![variants](variants.png)", ""]
    lines += _run_report_links(suite, suite_dir.parent, options)
    path = suite_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (suite_dir / FINALS_FILE).write_text(json.dumps(finals, indent=1) + "\n")
    (suite_dir / SCALE_FILE).write_text(json.dumps(
        _scale(suite, suite_dir.parent, runs, options), indent=1) + "\n")
    return path


def _scale(suite: str, workdir: pathlib.Path, runs: dict, options: RunOptions) -> dict:
    """What the summary needs of a suite's scale: training steps (of its first variant that
    is not a pretraining), seeds and tokenizer."""
    config = suite_config(SUITES[suite][0], workdir, seed=0, options=options)
    return {"steps": int(config.train.steps), "seeds": len(next(iter(runs.values()))),
            "tokenizer": config.data.tokenizer or "bytes"}
