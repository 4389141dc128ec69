"""Experiment statistics: one run's final numbers, mean and spread over seeds, verdicts.

Verdict rule (for a claim "A beats B on metric m", the same n seeds in both arms): the arms
share each seed's initial weights and data order, so they are compared seed by seed,
    d_i         = m_B,i - m_A,i     (or m_A,i - m_B,i when higher is better)
    improvement = mean d,   se = std(d, ddof=1) / sqrt(n)
    reproduced          if improvement >  2 se
    not reproduced      if improvement < -2 se
    inconclusive        otherwise, or with fewer than 2 seeds.
Arms of different lengths fall back to the unpaired se = sqrt(s_A^2 / n_A + s_B^2 / n_B).
The step-time overhead claim ("< 2% extra") is paired by seed: r_i = t_A,i / t_B,i - 1, and it
is reproduced when mean r + 2 se(r) < 0.02, not reproduced when mean r - 2 se(r) > 0.02.
"""

from __future__ import annotations

import math

import numpy as np

from moejax.train import plots

OVERHEAD_LIMIT = 0.02

# run metric -> (metrics.jsonl key, how a per-router list is reduced)
_FINAL_KEYS = {
    "val_loss": "val_loss",
    "val_perplexity": "val_perplexity",
    "routing_entropy": "routing/entropy",
    "specialization": "routing/specialization",
    "pathway_entropy": "routing/pathway_entropy",
    "domain_nmi": "eval/routing/domain_nmi",
    "load_cv": "routing/load_cv",
    "dropped_fraction": "routing/dropped_fraction",
    "step_ms": "step_ms",
}


def run_metrics(rows: list[dict]) -> dict:
    """One run's final numbers (per-router lists averaged over routers); NaN where not logged."""
    out = {}
    for name, key in _FINAL_KEYS.items():
        value, _ = plots.last_value(rows, key)
        out[name] = float(np.mean(value)) if value is not None else math.nan
    disabled, row = plots.last_value(rows, "val_loss_top1_disabled")
    out["top1_disabled_increase"] = math.nan if disabled is None else disabled - row["val_loss"]
    return out


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for fewer than 2 values)."""
    values = np.asarray(values, np.float64)
    std = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
    return float(np.mean(values)), std


def verdict(better, than, *, lower_is_better: bool = True) -> tuple[str, float, float]:
    """(label, improvement, se) for "`better` beats `than`" (see module doc)."""
    better, than = np.asarray(better, np.float64), np.asarray(than, np.float64)
    sign = 1.0 if lower_is_better else -1.0
    improvement = sign * (float(np.mean(than)) - float(np.mean(better)))
    if better.size < 2 or than.size < 2 or not np.all(np.isfinite(np.r_[better, than])):
        return "inconclusive (needs >= 2 seeds per arm with finite values)", improvement, math.nan
    if better.size == than.size:  # paired by seed
        se = float(np.std(than - better, ddof=1)) / math.sqrt(better.size)
    else:
        se = math.sqrt(np.var(better, ddof=1) / better.size + np.var(than, ddof=1) / than.size)
    return _label(improvement, se), improvement, se


def overhead_verdict(treated_ms, baseline_ms) -> tuple[str, float, float]:
    """(label, mean relative overhead, se) of paired step times (see module doc)."""
    ratios = np.asarray(treated_ms, np.float64) / np.asarray(baseline_ms, np.float64) - 1.0
    mean = float(np.mean(ratios))
    if ratios.size < 2 or not np.all(np.isfinite(ratios)):
        return "inconclusive (needs >= 2 seeds with finite values)", mean, math.nan
    se = float(np.std(ratios, ddof=1)) / math.sqrt(ratios.size)
    if mean + 2 * se < OVERHEAD_LIMIT:
        return "reproduced", mean, se
    if mean - 2 * se > OVERHEAD_LIMIT:
        return "not reproduced", mean, se
    return "inconclusive at this scale", mean, se


def _label(improvement: float, se: float) -> str:
    if improvement > 2 * se:
        return "reproduced"
    if improvement < -2 * se:
        return "not reproduced"
    return "inconclusive at this scale"
