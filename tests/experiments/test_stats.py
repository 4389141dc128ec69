"""The experiments' statistics against scipy and hand computations: the paired t-test, Holm's
adjustment, the equivalence test (TOST) and the exact power of the paired test."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from moejax.experiments import stats


def test_paired_test_equals_scipy_and_its_interval():
    rng = np.random.default_rng(0)
    than = rng.normal(3.0, 0.1, 6)
    better = than - rng.normal(0.02, 0.03, 6)
    test = stats.paired_test(better, than)
    want = scipy_stats.ttest_rel(than, better)
    assert test.n == 6 and test.df == 5
    np.testing.assert_allclose(test.p_value, want.pvalue, rtol=1e-12)
    np.testing.assert_allclose(test.improvement, np.mean(than - better), rtol=1e-12)
    half = scipy_stats.t.ppf(0.975, 5) * np.std(than - better, ddof=1) / math.sqrt(6)
    np.testing.assert_allclose(test.ci, (test.improvement - half, test.improvement + half))
    higher = stats.paired_test(-better, -than, lower_is_better=False)
    np.testing.assert_allclose(higher.improvement, test.improvement)
    assert math.isnan(stats.paired_test(better[:1], than[:1]).p_value)


def test_holm_by_hand():
    """p sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, made monotone; NaN stays out."""
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    got = stats.holm([0.01, math.nan, 0.5])
    assert got[0] == pytest.approx(0.02) and math.isnan(got[1]) and got[2] == pytest.approx(0.5)


def test_equivalence_is_the_larger_of_two_one_sided_tests():
    test = stats.PairedTest(8, 0.001, 0.002, 7, math.nan, (math.nan, math.nan))
    lower = scipy_stats.t.sf((0.001 + 0.01) / 0.002, 7)
    upper = scipy_stats.t.cdf((0.001 - 0.01) / 0.002, 7)
    assert stats.equivalence_p(test, 0.01) == pytest.approx(max(lower, upper))
    assert stats.equivalence_p(test, 0.01) < 0.01  # an effect of 0.01 is excluded
    assert stats.equivalence_p(test, 0.002) > 0.05  # one of 0.002 is not


def test_family_verdicts_tell_no_effect_from_undecided():
    """Four claims: a clear effect, one the wrong way, one tightly around zero (an effect of
    the margin's size is excluded) and one too noisy to say."""
    rng = np.random.default_rng(1)
    base = rng.normal(3.0, 0.1, 8)
    noise = rng.normal(0, 1, (4, 8))
    arms = [base - 0.05 - 0.002 * noise[0], base + 0.05 + 0.002 * noise[1],
            base - 0.0002 * noise[2], base - 0.01 * noise[3]]
    tests = [stats.paired_test(arm, base) for arm in arms]
    rows = stats.family_verdicts(tests, [0.01] * 4)
    assert [row["verdict"] for row in rows] == ["reproduced", "not reproduced",
                                                 "no effect of the claimed size", "undecided"]
    assert rows[0]["p_holm"] == pytest.approx(stats.holm([t.p_value for t in tests])[0])
    # two claims at p = 0.02 and 0.03: each significant alone, neither after Holm (0.04, 0.04
    # < 0.05 - both kept); at p = 0.02 and 0.04, Holm gives 0.04 and 0.04; at 0.03 and 0.04,
    # 0.06 and 0.06: both undecided though each alone is below 0.05
    borderline = [stats.PairedTest(4, 0.1, 0.01, 3, p, (0.0, 0.2)) for p in (0.03, 0.04)]
    assert [row["verdict"] for row in stats.family_verdicts(borderline, [None, None])] == [
        "undecided", "undecided"]
    no_margin = stats.family_verdicts(tests[2:3], [None])
    assert no_margin[0]["verdict"] == "undecided"  # without a target, no equivalence test
    unmeasured = stats.family_verdicts([stats.paired_test([], []), tests[0]], [0.01, 0.01])
    assert [row["verdict"] for row in unmeasured] == ["not measured", "reproduced"]


def test_power_is_exact_and_seeds_needed_uses_it():
    """The old rule (t + z quantiles) called n = 2 enough for delta / s = 9.58, whose exact
    power is 0.71; a Monte Carlo of the paired test agrees with the noncentral t."""
    assert stats.power_paired(2, 9.58, 1.0) == pytest.approx(0.712, abs=0.002)
    assert stats.seeds_needed(9.58, 1.0) == 3
    rng = np.random.default_rng(0)
    d = rng.normal(0.5, 1.0, (200_000, 10))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(10))
    simulated = np.mean(np.abs(t) > scipy_stats.t.ppf(0.975, 9))
    assert stats.power_paired(10, 0.5, 1.0) == pytest.approx(simulated, abs=0.005)
    n = stats.seeds_needed(0.5, 1.0)
    assert stats.power_paired(n, 0.5, 1.0) >= 0.8 > stats.power_paired(n - 1, 0.5, 1.0)
    assert stats.effect_per_byte(stats.PAPER_A_LOSS_EFFECT, 4.0) == pytest.approx(0.00465,
                                                                               abs=1e-5)
    with pytest.raises(ValueError, match="bytes_per_token=0; allowed: a number > 0"):
        stats.effect_per_byte(0.0186, 0)
