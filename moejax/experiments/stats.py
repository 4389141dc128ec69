"""Experiment statistics: one run's final numbers, mean and spread over seeds, verdicts.

The single-claim rule (`verdict`, `overhead_verdict`; the reports before 2026-12-05 used it,
the reports now use `paired_test`, `overhead_test` and `family_verdicts` below), for a claim
"A beats B on metric m", the same n seeds in both arms: the arms share each seed's initial
weights and data order, so they are compared seed by seed,
    d_i         = m_B,i - m_A,i     (or m_A,i - m_B,i when higher is better)
    improvement = mean d,   se = std(d, ddof=1) / sqrt(n),   t = t_0.975(n - 1)
    reproduced          if improvement >  t se
    not reproduced      if improvement < -t se
    inconclusive        otherwise, or with fewer than 2 seeds.
That is a two-sided paired t-test at the 5% level (t from scipy, exact): with 3 seeds
t = 4.30, so a "2 se" rule would call about one null claim in five. Arms of different
lengths fall back to Welch's test: se = sqrt(s_A^2 / n_A + s_B^2 / n_B) with the
Welch-Satterthwaite degrees of freedom.
The step-time overhead claim ("< 2% extra") is paired by interleaved round (both variants'
steps timed one after the other, `moejax/train/step_time.py`): r_i = t_A,i / t_B,i - 1, and it
is reproduced when mean r + t se(r) < 0.02, not reproduced when mean r - t se(r) > 0.02
(`overhead_test`: the same test as a `PairedTest` of 0.02 - r, for a family).

A family of claims (the summary's) is judged together (`family_verdicts`): each claim's paired
test gives a two-sided p-value, Holm-adjusted across the family; where the claim has a target
effect (the paper's, converted to the run's unit: `effect_per_byte` for a byte-level loss),
two one-sided tests (TOST) ask whether an effect that large is excluded, Holm-adjusted across
the claims with a target. Verdicts: "reproduced" (difference significant, claimed direction),
"not reproduced" (significant, other direction), "no effect of the claimed size" (equivalence
significant), "undecided" (neither).

Power (`power_paired`, `seeds_needed`): the exact power of the two-sided paired t-test from
the noncentral t distribution (delta the true mean difference, s the standard deviation of one
seed's difference, noncentrality sqrt(n) delta / s); `seeds_needed` is the fewest seeds with
power >= 1 - beta. Paper A's headline effect, perplexity 12.50 -> 12.27, is
delta = ln(12.50 / 12.27) = 0.0186 nats per BPE token (PAPER_A_LOSS_EFFECT). The suites train
byte-level, so their loss is per byte: the target is 0.0186 / BPE_BYTES_PER_TOKEN
(`loss_margin`), the bytes per token a 32,000-token BPE gives on the suites' own validation
text. Paper A's tokenizer and text differ from that BPE and this corpus, so the per-byte target
is an approximation of the paper's effect, not its measurement.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import NamedTuple

import numpy as np

from moejax.options import check_range
from moejax.reporting import metrics

OVERHEAD_LIMIT = 0.02
PAPER_A_LOSS_EFFECT = math.log(12.50 / 12.27)  # nats: paper A's perplexity gain, -1.8%
# UTF-8 bytes per token of a byte-level BPE of BPE_VOCAB tokens (`moejax.data.tokenizer.train_bpe`)
# trained on the training split of the suites' corpus (the default "stdlib" DataSpec: 1,678
# documents, 29.8 MB) and counted on its validation split: 1,756,322 bytes / 450,732 tokens
# (2026-12-05; 3.94 at GPT-2's 50,257 tokens). docs/results/README.md has the command.
BPE_VOCAB = 32_000
BPE_BYTES_PER_TOKEN = 3.8966

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


def t_critical(df: float, level: float = 0.975) -> float:
    """Student's t quantile t_level(df) (df >= 1; exact, scipy)."""
    from scipy import stats as scipy_stats

    if df < 1:
        raise ValueError(f"degrees of freedom {df} < 1")
    return float(scipy_stats.t.ppf(level, df))


class PairedTest(NamedTuple):
    """A paired comparison of two arms over the same n seeds.

    improvement: mean d_i (positive: the claimed-better arm is better); se: its standard
    error; df = n - 1; p_value: two-sided p of "no difference"; ci: the 95% interval of the
    improvement.
    """

    n: int
    improvement: float
    se: float
    df: float
    p_value: float
    ci: tuple[float, float]

    @property
    def measured(self) -> bool:
        """Whether there is a test: two or more paired seeds (none where the claim's metric
        was not measured)."""
        return self.n >= 2


def paired_test(better, than, *, lower_is_better: bool = True) -> PairedTest:
    """The paired t-test of "`better` beats `than`" seed by seed (NaN p with < 2 seeds or a
    non-finite value)."""
    from scipy import stats as scipy_stats

    better, than = np.asarray(better, np.float64), np.asarray(than, np.float64)
    if better.shape != than.shape:
        raise ValueError(f"paired arms need the same seeds: {better.size} vs {than.size}")
    d = (than - better) if lower_is_better else (better - than)
    n, mean = d.size, float(np.mean(d)) if d.size else math.nan
    if n < 2 or not np.all(np.isfinite(d)):
        return PairedTest(n, mean, math.nan, n - 1, math.nan, (math.nan, math.nan))
    se = float(np.std(d, ddof=1)) / math.sqrt(n)
    half = t_critical(n - 1) * se
    if se == 0:
        p = 0.0 if mean != 0 else 1.0
    else:
        p = float(2 * scipy_stats.t.sf(abs(mean) / se, n - 1))
    return PairedTest(n, mean, se, n - 1, p, (mean - half, mean + half))


def equivalence_p(test: PairedTest, margin: float) -> float:
    """Two one-sided tests (TOST) of |true improvement| >= margin: the larger one-sided p of
    "improvement <= -margin" and "improvement >= margin". Small: no effect of that size."""
    from scipy import stats as scipy_stats

    if not (margin > 0 and math.isfinite(test.se)):
        return math.nan
    if test.se == 0:
        return 0.0 if abs(test.improvement) < margin else 1.0
    lower = scipy_stats.t.sf((test.improvement + margin) / test.se, test.df)
    upper = scipy_stats.t.cdf((test.improvement - margin) / test.se, test.df)
    return float(max(lower, upper))


def holm(p_values) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN and does not count
    towards the family size): adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))."""
    p_values = [float(p) for p in p_values]
    finite = sorted((p, i) for i, p in enumerate(p_values) if math.isfinite(p))
    adjusted, running = list(p_values), 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[i] = running
    return adjusted


VERDICTS = ("reproduced", "not reproduced", "no effect of the claimed size", "undecided",
            "not measured")


def family_verdicts(tests: list[PairedTest], margins: list[float | None], *,
                    alpha: float = 0.05) -> list[dict]:
    """One verdict per claim of a family, Holm-adjusted across the family:

    - "reproduced": the difference test rejects (adjusted p < alpha) in the claimed direction;
    - "not reproduced": it rejects in the other direction;
    - "no effect of the claimed size": else, where the equivalence test (TOST against
      `margins[i]`, the paper's effect in the run's unit; Holm-adjusted across the claims
      that have a margin) rejects an effect as large as claimed;
    - "undecided": neither;
    - "not measured": fewer than two paired seeds (results from before the claim's metric
      existed), so no test.

    Returns dicts with the raw and adjusted p-values of both tests and the verdict.
    """
    difference = holm([test.p_value for test in tests])
    tost = [equivalence_p(test, margin) if margin else math.nan
            for test, margin in zip(tests, margins, strict=True)]
    tost_adjusted = holm(tost)
    rows = []
    for test, p, q, q_raw, margin in zip(tests, difference, tost_adjusted, tost, margins,
                                         strict=True):
        if not test.measured:
            label = VERDICTS[4]
        elif math.isfinite(p) and p < alpha:
            label = VERDICTS[0] if test.improvement > 0 else VERDICTS[1]
        elif math.isfinite(q) and q < alpha:
            label = VERDICTS[2]
        else:
            label = VERDICTS[3]
        rows.append({"verdict": label, "p": test.p_value, "p_holm": p, "margin": margin,
                     "p_equivalence": q_raw, "p_equivalence_holm": q})
    return rows


def power_paired(n: int, effect: float, sd: float, *, alpha: float = 0.05) -> float:
    """Exact power of the two-sided paired t-test at level alpha with n seeds, for a true mean
    difference `effect` and a per-seed difference standard deviation `sd` (noncentral t)."""
    from scipy import stats as scipy_stats

    if n < 2:
        return math.nan
    if sd == 0:
        return 1.0 if effect else alpha
    df, nc = n - 1, math.sqrt(n) * abs(effect) / sd
    t = t_critical(df, 1 - alpha / 2)
    # the lower tail P(T < -t) as P(T > t) at -nc: nct.cdf is NaN there for large nc
    return float(scipy_stats.nct.sf(t, df, nc) + scipy_stats.nct.sf(t, df, -nc))


def effect_per_byte(nats_per_token: float, bytes_per_token: float) -> float:
    """A per-token loss effect in nats per UTF-8 byte, through the measured bytes per token
    (paper A's 0.0186 nats per BPE token is ~0.0046 per byte at ~4 bytes per token)."""
    if not bytes_per_token > 0:
        raise ValueError(f"bytes_per_token={bytes_per_token!r}; allowed: a number > 0")
    return nats_per_token / bytes_per_token


def loss_margin(nats_per_token: float, tokenizer: str = "bytes") -> float:
    """A paper's per-token loss effect in the run's unit: per byte (through
    BPE_BYTES_PER_TOKEN) for the byte tokenizer, per token (unchanged) for a subword one."""
    if tokenizer in (None, "bytes"):
        return effect_per_byte(nats_per_token, BPE_BYTES_PER_TOKEN)
    return nats_per_token


def overhead_test(treated_ms, baseline_ms) -> PairedTest:
    """The step-time claim "treated costs < OVERHEAD_LIMIT extra" as a `PairedTest` over
    interleaved rounds: improvement = OVERHEAD_LIMIT - mean r (positive: under the limit),
    r_i = t_treated,i / t_baseline,i - 1; p is two-sided, of "mean r = OVERHEAD_LIMIT"."""
    ratios = np.asarray(treated_ms, np.float64) / np.asarray(baseline_ms, np.float64) - 1.0
    return paired_test(ratios, np.full_like(ratios, OVERHEAD_LIMIT))


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


def seeds_needed(effect: float, sd: float, *, power: float = 0.8, alpha: float = 0.05,
                 limit: int = 10_000) -> int:
    """The fewest seeds (>= 2) for which the two-sided paired t-test at level alpha detects a
    true mean improvement `effect` with probability >= `power`, given the standard deviation
    `sd` of one seed's paired difference (exact: `power_paired`); `limit` + 1 if none up to
    `limit`."""
    check_range("power", power, 0.0, 1.0, low_open=True, high_open=True)
    for n in range(2, limit + 1):
        if power_paired(n, effect, sd, alpha=alpha) >= power:
            return n
    return limit + 1
