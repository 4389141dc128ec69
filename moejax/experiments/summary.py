"""The summary over the suites: DIR/summary.md, and the suite reports' Claims sections.

DIR/summary.md lists every claim of every suite run so far once, at its largest scale
(`largest_scale`), with verdicts Holm-adjusted across its family (the primary claims, then the
others), then the power table. It and the reports' Claims sections are rebuilt from each
suite's finals.json alone by `write_summary` and `refresh_claims` (no retraining). Each
suite's report, finals.json and scale.json are written by `suite_report.py`.
"""

from __future__ import annotations

import json
import pathlib
from typing import NamedTuple

import numpy as np

from moejax.experiments import stats
from moejax.experiments.suite_report import (
    CLAIMS_TEXT,
    FINALS_FILE,
    SCALE_FILE,
    ClaimResult,
    _claim_rows,
    _margin_cell,
    _p,
    claim_results,
    shown_effect,
)
from moejax.experiments.suites import SUITES
from moejax.reporting.metrics import METRICS_FILE, STEP, read_metrics


def _finished_suites(workdir: pathlib.Path, suites) -> list[tuple[str, str]]:
    """(label, suite) of every DIR/<suite>/finals.json, then of every DIR/<name>/<suite>/
    finals.json (another results directory kept inside DIR, e.g. a longer run), labelled
    "<name>/<suite>"."""
    found = [(suite, suite) for suite in suites if (workdir / suite / FINALS_FILE).exists()]
    for child in sorted(p for p in workdir.iterdir() if p.is_dir()):
        found += [(f"{child.name}/{suite}", suite) for suite in suites
                  if (child / suite / FINALS_FILE).exists()]
    return found


class SummaryRow(NamedTuple):
    """A claim as one results directory answers it: `where` (DIR-relative), its training
    steps (None: unknown) and the `ClaimResult`."""

    where: str
    steps: int | None
    result: ClaimResult


def largest_scale(rows: list[SummaryRow]) -> list[tuple[SummaryRow, list[SummaryRow]]]:
    """One row per claim (`Claim.key`): of the rows with a test (two or more paired seeds;
    a suite run before the claim's metric existed has none), the one of most training steps,
    then most seeds, then the first; with the claim's rows at other scales. In order of first
    appearance."""
    groups: dict[tuple, list[SummaryRow]] = {}
    for row in rows:
        groups.setdefault(row.result.claim.key, []).append(row)
    out = []
    for group in groups.values():
        best = max(group, key=lambda r: (r.result.test.measured, r.steps or 0, r.result.test.n))
        out.append((best, [r for r in group if r is not best]))
    return out


def suite_steps(results_dir: pathlib.Path, suite: str) -> int | None:
    """Training steps of a finished suite in `results_dir`: its SCALE_FILE, else the most
    steps logged by the seed-0 runs labelled with the suite's variants (runs/*/variants.txt;
    pretraining runs not counted); None if neither is there."""
    scale = results_dir / suite / SCALE_FILE
    if scale.exists():
        return json.loads(scale.read_text())["steps"]
    labels = {f"{suite}: {variant.name}" for variant in SUITES[suite]}
    steps = []
    for listing in sorted(results_dir.glob("runs/*/variants.txt")):
        metrics_path = listing.parent / "seed_0" / METRICS_FILE
        if labels & set(listing.read_text().splitlines()) and metrics_path.exists():
            rows = read_metrics(metrics_path)
            steps += [rows[-1][STEP]] if rows else []
    return max(steps) if steps else None


def _suite_tokenizer(results_dir: pathlib.Path, suite: str) -> str:
    """The suite's `data.tokenizer` from its SCALE_FILE ("bytes" without one)."""
    scale = results_dir / suite / SCALE_FILE
    return json.loads(scale.read_text()).get("tokenizer", "bytes") if scale.exists() else "bytes"


def summary_rows(workdir: pathlib.Path, suites) -> list[SummaryRow]:
    """Every claim of every finished suite of DIR (`_finished_suites`), with its scale."""
    rows = []
    for where, suite in _finished_suites(workdir, suites):
        results_dir = (workdir / where).parent
        finals = json.loads((workdir / where / FINALS_FILE).read_text())
        steps = suite_steps(results_dir, suite)
        for result in claim_results(suite, finals, _suite_tokenizer(results_dir, suite)):
            rows.append(SummaryRow(where, steps, result))
    return rows


def _scale_text(row: SummaryRow) -> str:
    """The summary's "results, scale" cell: link, steps, seeds (or timing rounds)."""
    steps = "? steps" if row.steps is None else f"{row.steps:,} steps"
    unit = "rounds" if row.result.claim.metric == stats.STEP_MS_OVERHEAD else "seeds"
    return f"[{row.where}]({row.where}/report.md), {steps}, {row.result.test.n} {unit}"


def _family_lines(title: str, intro: str, chosen: list) -> list[str]:
    """A family's table: its verdicts Holm-adjusted across its rows (`stats.family_verdicts`)."""
    if not chosen:
        return []
    verdicts = stats.family_verdicts([best.result.test for best, _ in chosen],
                                     [best.result.margin for best, _ in chosen])
    counts = ", ".join(f"{sum(v['verdict'] == label for v in verdicts)} {label}"
                       for label in stats.VERDICTS)
    lines = ["", f"## {title}", "", f"{intro} {len(chosen)} claims: {counts}.", "",
             "| claim | results, scale | improvement [95% CI] | p | p Holm | "
             "equivalence p Holm (margin) | verdict | other scales |",
             "|---|---|---|---|---|---|---|---|"]
    for (best, others), verdict in zip(chosen, verdicts, strict=True):
        also = ", ".join(f"[{r.where}]({r.where}/report.md)" for r in others) or "–"
        lines.append(f"| {best.result.claim.text} | {_scale_text(best)} | "
                     f"{shown_effect(best.result)} | {_p(verdict['p'])} | "
                     f"{_p(verdict['p_holm'])} | "
                     f"{_margin_cell(best.result.margin, verdict['p_equivalence_holm'])} | "
                     f"**{verdict['verdict']}** | {also} |")
    return lines


def _power_lines(chosen: list) -> list[str]:
    """Seeds the paired test needs for paper A's effect per byte, per validation-loss claim."""
    target = stats.loss_margin(stats.PAPER_A_LOSS_EFFECT)
    lines = ["", "## Power", "",
             f"Seeds per arm the paired test needs to detect paper A's effect on validation "
             f"loss with 80% power at 5% (exact, noncentral t: `stats.seeds_needed`): "
             f"{stats.PAPER_A_LOSS_EFFECT:.4f} nats per BPE token (perplexity 12.50 -> 12.27) "
             f"/ {stats.BPE_BYTES_PER_TOKEN} bytes per token (`stats.BPE_BYTES_PER_TOKEN`, a "
             f"{stats.BPE_VOCAB:,}-token BPE on this corpus) = {target:.5f} nats per byte, "
             "from each claim's measured standard deviation of seed-paired differences.", "",
             "| claim | results | paired sd (nats per byte) | seeds needed |",
             "|---|---|---|---|"]
    for best, _ in chosen:
        result = best.result
        if result.claim.metric == stats.VAL_LOSS and result.test.n > 1:
            n = result.test.n
            sd = float(np.std(np.subtract(result.b[:n], result.a[:n]), ddof=1))
            lines.append(f"| {result.claim.text} | {best.where} | {sd:.2g} | "
                         f"{stats.seeds_needed(target, sd)} |")
    return lines


def write_summary(workdir, suites) -> pathlib.Path:
    """DIR/summary.md: one row per claim of the suites whose DIR/<suite>/finals.json or
    DIR/<name>/<suite>/finals.json exists, at its largest scale (`largest_scale`), in two
    Holm families: the primary claims (`Claim.primary`) and the others; then the power table."""
    workdir = pathlib.Path(workdir).resolve()
    chosen = largest_scale(summary_rows(workdir, suites))
    primary = [item for item in chosen if item[0].result.claim.primary]
    secondary = [item for item in chosen if not item[0].result.claim.primary]
    target = stats.loss_margin(stats.PAPER_A_LOSS_EFFECT)
    lines = ["# Experiment summary", "",
             "One row per claim, at its largest scale (most training steps, then most seeds); "
             "its rows at other scales stay in the reports linked under \"other scales\". "
             "Improvement of A over B paired by seed, its 95% interval and two-sided p "
             "(paired t-test); p Holm: Holm-adjusted across the row's family. Equivalence: two "
             "one-sided tests of \"an effect as large as the paper's\", where the paper gives "
             f"one (paper A's {stats.PAPER_A_LOSS_EFFECT:.4f} nats per token = {target:.5f} "
             f"nats per byte through {stats.BPE_BYTES_PER_TOKEN} bytes per BPE token), "
             "Holm-adjusted across the family's claims that have a margin. Verdicts: "
             "reproduced (significant, claimed direction), not reproduced (significant, other "
             "direction), no effect of the claimed size (equivalence significant), undecided "
             "(neither). Rules: `moejax/experiments/stats.py`."]
    lines += _family_lines(
        "Primary claims", "The Holm family: the papers' own claims at their settings, declared "
        "`primary=True` in `moejax/experiments/suites.py`;", primary)
    lines += _family_lines(
        "Secondary claims", "A second Holm family: ablations, the 10x dose and the mechanism "
        "checks;", secondary)
    lines += _power_lines(chosen)
    path = workdir / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def refresh_claims(workdir, suites) -> list[pathlib.Path]:
    """Rewrites the "## Claims" section of every finished suite's report.md in DIR (and
    DIR/<name>/) from its finals.json, without the runs: how reports of runs trained under
    older code get the current statistics. Returns the reports rewritten."""
    workdir = pathlib.Path(workdir).resolve()
    done = []
    for where, suite in _finished_suites(workdir, suites):
        report = workdir / where / "report.md"
        if not report.exists():
            continue
        finals = json.loads((workdir / where / FINALS_FILE).read_text())
        results_dir = (workdir / where).parent
        text = report.read_text()
        head, marker, rest = text.partition("\n## Claims\n")
        if not marker:
            continue
        _, next_section, tail = rest.partition("\n## ")
        section = ["", CLAIMS_TEXT, "",
                   *_claim_rows(claim_results(suite, finals, _suite_tokenizer(results_dir,
                                                                              suite)))]
        report.write_text(head + marker + "\n".join(section) + "\n" + next_section + tail)
        done.append(report)
    return done
