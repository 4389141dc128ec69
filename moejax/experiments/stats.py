"""Experiment statistics: one run's final numbers, mean and spread over seeds, verdicts.

Verdict rule (for a claim "A beats B on metric m", the same n seeds in both arms): the arms
share each seed's initial weights and data order, so they are compared seed by seed,
    d_i         = m_B,i - m_A,i     (or m_A,i - m_B,i when higher is better)
    improvement = mean d,   se = std(d, ddof=1) / sqrt(n),   t = t_0.975(n - 1)
    reproduced          if improvement >  t se
    not reproduced      if improvement < -t se
    inconclusive        otherwise, or with fewer than 2 seeds.
That is a two-sided paired t-test at the 5% level: with 3 seeds t = 4.30, so a "2 se" rule
would call about one null claim in five. Arms of different lengths fall back to Welch's test:
se = sqrt(s_A^2 / n_A + s_B^2 / n_B) with the Welch-Satterthwaite degrees of freedom.
The step-time overhead claim ("< 2% extra") is paired by interleaved round (both variants'
steps timed one after the other, `moejax/train/step_time.py`): r_i = t_A,i / t_B,i - 1, and it
is reproduced when mean r + t se(r) < 0.02, not reproduced when mean r - t se(r) > 0.02.

Power (`seeds_needed`): how many seeds the paired test above needs to call a true improvement
delta "reproduced" with probability 1 - beta, given the standard deviation s of one seed's
difference d_i: the smallest n with sqrt(n) delta / s >= t_0.975(n - 1) + z_(1 - beta) (the
usual normal approximation of the noncentral t). Paper A's headline effect, perplexity 12.50 ->
12.27, is delta = ln(12.50 / 12.27) = 0.0186 nats of validation loss (PAPER_A_LOSS_EFFECT).
"""

from __future__ import annotations

import math
from types import MappingProxyType

import numpy as np

from moejax.options import check_choice
from moejax.reporting import metrics

OVERHEAD_LIMIT = 0.02
PAPER_A_LOSS_EFFECT = math.log(12.50 / 12.27)  # nats: paper A's perplexity gain, -1.8%
_Z_POWER = {0.8: 0.8416, 0.9: 1.2816}  # z_(1 - beta) for power 1 - beta

# The final numbers of a run (`run_metrics`), the names the suites' claims, the suite report's
# columns and finals.json use.
VAL_LOSS = metrics.VAL_LOSS
VAL_PERPLEXITY = metrics.VAL_PERPLEXITY
ROUTING_ENTROPY = "routing_entropy"
SPECIALIZATION = "specialization"
PATHWAY_ENTROPY = "pathway_entropy"
DOMAIN_NMI = "domain_nmi"
LOAD_CV = "load_cv"
DROPPED_FRACTION = "dropped_fraction"
STEP_MS = metrics.STEP_MS
EVAL_DROPPED_TOP1_DISABLED = "eval_dropped_top1_disabled"
TOP1_DISABLED_INCREASE = "top1_disabled_increase"  # val loss with the top-1 expert off - val loss
STEP_MS_INTERLEAVED = "step_ms_interleaved"  # per-round times (DIR/<suite>/step_time.json)
STEP_MS_OVERHEAD = "step_ms_overhead"  # the step-time claim's metric, from STEP_MS_INTERLEAVED

# final number -> the metrics.jsonl key whose last value (reduced, `metrics.reduced`) it is
FINAL_KEYS = MappingProxyType({
    VAL_LOSS: metrics.VAL_LOSS,
    VAL_PERPLEXITY: metrics.VAL_PERPLEXITY,
    ROUTING_ENTROPY: metrics.ROUTING_ENTROPY,
    SPECIALIZATION: metrics.ROUTING_SPECIALIZATION,
    PATHWAY_ENTROPY: metrics.ROUTING_PATHWAY_ENTROPY,
    DOMAIN_NMI: metrics.EVAL_ROUTING_DOMAIN_NMI,
    LOAD_CV: metrics.ROUTING_LOAD_CV,
    DROPPED_FRACTION: metrics.ROUTING_DROPPED_FRACTION,
    STEP_MS: metrics.STEP_MS,
    EVAL_DROPPED_TOP1_DISABLED: metrics.EVAL_ROUTING_DROPPED_FRACTION_TOP1_DISABLED,
})


def domain_val_loss(domain: str) -> str:
    """The final number of `domain`'s last validation loss: "val_loss <domain>"."""
    return f"{VAL_LOSS} {domain}"


def run_metrics(rows: list[dict], domains=()) -> dict:
    """One run's final numbers (lists reduced by `metrics.reduced`: per-router ones averaged
    over routers); NaN where not logged.

    domains: names whose last validation loss is wanted too, as `domain_val_loss(name)`.
    """
    out = {}
    for name, key in FINAL_KEYS.items():
        value = metrics.reduced(key, metrics.last_value(rows, key)[0])
        out[name] = float(value) if value is not None else math.nan
    disabled, row = metrics.last_value(rows, metrics.VAL_LOSS_TOP1_DISABLED)
    out[TOP1_DISABLED_INCREASE] = (math.nan if disabled is None
                                   else disabled - row[metrics.VAL_LOSS])
    losses, row = metrics.last_value(rows, metrics.EVAL_DOMAIN_LOSS)
    names = list(row.get(metrics.EVAL_DOMAIN_NAMES) or []) if row else []
    for name in domains:
        out[domain_val_loss(name)] = (float(losses[names.index(name)]) if name in names
                                      else math.nan)
    return out


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for fewer than 2 values)."""
    values = np.asarray(values, np.float64)
    std = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
    return float(np.mean(values)), std


# Two-sided 95% critical values t_0.975(df) of Student's t; a df between entries uses the
# entry below it (a slightly larger value, so the test stays conservative).
_T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
          9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000,
          120: 1.980}


def t_critical(df: float) -> float:
    """t_0.975(df) from `_T_975` (df >= 1; the normal 1.960 beyond 120)."""
    if df < 1:
        raise ValueError(f"degrees of freedom {df} < 1")
    if df > 120:
        return 1.960
    return _T_975[max(k for k in _T_975 if k <= df)]


def verdict(better, than, *, lower_is_better: bool = True) -> tuple[str, float, float]:
    """(label, improvement, se) for "`better` beats `than`" (see module doc)."""
    better, than = np.asarray(better, np.float64), np.asarray(than, np.float64)
    sign = 1.0 if lower_is_better else -1.0
    improvement = sign * (float(np.mean(than)) - float(np.mean(better)))
    if better.size < 2 or than.size < 2 or not np.all(np.isfinite(np.r_[better, than])):
        return "inconclusive (needs >= 2 seeds per arm with finite values)", improvement, math.nan
    if better.size == than.size:  # paired by seed
        se = float(np.std(than - better, ddof=1)) / math.sqrt(better.size)
        df = better.size - 1
    else:  # Welch
        va, vb = np.var(better, ddof=1) / better.size, np.var(than, ddof=1) / than.size
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (better.size - 1) + vb**2 / (than.size - 1)) if se else 1
    return _label(improvement, se, t_critical(df)), improvement, se


def overhead_verdict(treated_ms, baseline_ms) -> tuple[str, float, float]:
    """(label, mean relative overhead, se) of step times paired by round (see module doc)."""
    ratios = np.asarray(treated_ms, np.float64) / np.asarray(baseline_ms, np.float64) - 1.0
    mean = float(np.mean(ratios)) if ratios.size else math.nan
    if ratios.size < 2 or not np.all(np.isfinite(ratios)):
        return "inconclusive (needs >= 2 timed rounds with finite times)", mean, math.nan
    se = float(np.std(ratios, ddof=1)) / math.sqrt(ratios.size)
    t = t_critical(ratios.size - 1)
    if mean + t * se < OVERHEAD_LIMIT:
        return "reproduced", mean, se
    if mean - t * se > OVERHEAD_LIMIT:
        return "not reproduced", mean, se
    return "inconclusive at this scale", mean, se


def _label(improvement: float, se: float, t: float) -> str:
    if improvement > t * se:
        return "reproduced"
    if improvement < -t * se:
        return "not reproduced"
    return "inconclusive at this scale"


def seeds_needed(effect: float, sd: float, *, power: float = 0.8) -> int:
    """Seeds per arm for the paired test to detect a true mean improvement `effect` with
    probability `power` (0.8 or 0.9), given the standard deviation `sd` of one seed's paired
    difference (see module doc); at least 2."""
    check_choice("power", power, sorted(_Z_POWER))
    if sd == 0:
        return 2
    n = 2
    while math.sqrt(n) * abs(effect) / sd < t_critical(n - 1) + _Z_POWER[power]:
        n += 1
    return n
