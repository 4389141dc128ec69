"""moejax-experiment: statistics against NumPy, matched variants, and --quick end to end."""

import math
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from moejax.cli import experiment as experiment_cli
from moejax.experiments import runner as experiment
from moejax.experiments import stats
from moejax.experiments.suites import (
    CLAIMS,
    OFFLOAD_SUITES,
    SUITES,
    RunOptions,
    config_differences,
)

QUICK = RunOptions(quick=True)


def test_mean_std_and_verdicts_against_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.1, 5), rng.normal(2.0, 0.1, 4)
    mean, std = stats.mean_std(a)
    assert mean == pytest.approx(a.sum() / 5)
    assert std == pytest.approx(math.sqrt(((a - a.mean()) ** 2).sum() / 4))
    label, improvement, se = stats.verdict(a, b)  # a is lower: reproduced (unpaired: 5 vs 4)
    assert improvement == pytest.approx(b.mean() - a.mean())
    assert se == pytest.approx(math.sqrt(a.var(ddof=1) / 5 + b.var(ddof=1) / 4))
    assert label == "reproduced"
    shared = rng.normal(0.0, 1.0, 4)  # a large seed effect common to both arms
    treated, control = shared + 0.01 + rng.normal(0, 1e-3, 4), shared
    label, improvement, se = stats.verdict(control, treated)  # paired: the shift shows
    d = treated - control
    assert improvement == pytest.approx(d.mean())
    assert se == pytest.approx(np.sqrt(((d - d.mean()) ** 2).sum() / 3) / 2)
    assert label == "reproduced"
    assert stats.verdict(b, a)[0] == "not reproduced"
    assert stats.verdict(a, b, lower_is_better=False)[0] == "not reproduced"
    assert stats.verdict(a, a[::-1])[0].startswith("inconclusive")  # paired, mean change 0
    assert stats.verdict(a[:1], b)[0].startswith("inconclusive")


def test_verdict_is_a_paired_t_test_at_five_percent():
    control = np.array([2.0, 3.0, 4.0])
    # paired differences 0.5, 1, 1.5: mean / se = 3.46, past 2 se but short of t(2) = 4.30
    label, improvement, se = stats.verdict(control - [0.5, 1.0, 1.5], control)
    assert improvement == pytest.approx(1.0) and se == pytest.approx(0.5 / math.sqrt(3))
    assert label.startswith("inconclusive")
    assert stats.verdict(control - [0.9, 1.0, 1.1], control)[0] == "reproduced"  # 17 se
    # printed tables' t_0.975: 4.303 (df 2), 2.201 (df 11), 1.965 (df 500)
    assert stats.t_critical(2) == pytest.approx(4.303, abs=5e-4)
    assert stats.t_critical(11) == pytest.approx(2.201, abs=5e-4)
    assert stats.t_critical(500) == pytest.approx(1.965, abs=5e-4)
    with pytest.raises(ValueError, match="degrees of freedom"):
        stats.t_critical(0.5)
    # under the null, "reproduced" and "not reproduced" each come up about 2.5% of the time
    rng = np.random.default_rng(1)
    labels = [stats.verdict(rng.normal(size=3), rng.normal(size=3))[0] for _ in range(4000)]
    assert 0.015 < labels.count("reproduced") / 4000 < 0.035
    assert 0.015 < labels.count("not reproduced") / 4000 < 0.035


def test_unpaired_verdict_uses_welch_degrees_of_freedom():
    a, b = np.array([1.0, 1.2, 0.9, 1.1, 1.0]), np.array([1.9, 2.3])
    va, vb = a.var(ddof=1) / 5, b.var(ddof=1) / 2
    df = (va + vb) ** 2 / (va**2 / 4 + vb**2 / 1)  # about 1.0: t = 12.7
    label, improvement, se = stats.verdict(a, b)
    assert se == pytest.approx(math.sqrt(va + vb)) and 1 <= df < 2
    assert improvement / se > 2 and label.startswith("inconclusive")


def test_seeds_needed_is_the_paired_tests_power():
    # effect = sd: n = 9 gives sqrt(9) = 3.000 < t(8) + z = 2.306 + 0.842; n = 10 gives 3.162 >=
    # t(9) + z = 2.262 + 0.842. Half the effect: n = 33 gives 2.872 < t(30) + z = 2.884, n = 34
    # gives 2.915.
    assert stats.seeds_needed(1.0, 1.0) == stats.seeds_needed(-1.0, 1.0) == 10
    assert stats.seeds_needed(0.5, 1.0) == 34
    assert stats.seeds_needed(1.0, 0.0) == 2
    assert abs(stats.PAPER_A_LOSS_EFFECT - 0.01857) < 1e-5


def test_overhead_verdict_is_paired_by_seed():
    baseline = np.array([100.0, 200.0, 300.0])
    assert stats.overhead_verdict(baseline * 1.005, baseline)[0] == "reproduced"
    assert stats.overhead_verdict(baseline * 1.10, baseline)[0] == "not reproduced"
    label, mean, se = stats.overhead_verdict(baseline * [1.0, 1.04, 1.02], baseline)
    assert label.startswith("inconclusive") and mean == pytest.approx(0.02)
    assert se == pytest.approx(np.std([0.0, 0.04, 0.02], ddof=1) / math.sqrt(3))


@pytest.mark.parametrize("suite", list(SUITES))
def test_variants_differ_only_in_the_intended_options(suite):
    differences = config_differences(suite, QUICK)
    reference = SUITES[suite][0]
    for variant in SUITES[suite]:
        changed = set(differences[variant.name])
        if suite == "cartesian":  # the architectures differ, nothing else
            assert changed and all(key.startswith("model.") for key in changed) or (
                variant is reference and not changed)
        else:
            intended = {k for k in set(variant.overrides) | set(reference.overrides)
                        if variant.overrides.get(k) != reference.overrides.get(k)}
            upcycles = variant.upcycle or {}, reference.upcycle or {}
            intended |= {f"upcycle.{k}" for k in set(upcycles[0]) | set(upcycles[1])
                         if upcycles[0].get(k) != upcycles[1].get(k)}
            assert changed == intended, variant.name


def test_every_claim_names_variants_of_its_suite():
    for suite, claims in CLAIMS.items():
        names = {v.name for v in SUITES[suite]}
        assert claims and all({c.better, c.than} <= names for c in claims)


def test_quick_runs_every_suite_end_to_end(tmp_path):
    """The command itself, as a user runs it (its own process, so --quick's XLA flags apply)."""
    done = subprocess.run(
        [sys.executable, "-m", "moejax.cli.experiment", "--suite", "all", "--quick",
         "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for suite in SUITES:
        text = (tmp_path / suite / "report.md").read_text()
        table = text.split("## Claims")[0]
        cells = re.findall(r"\| ([^|]*±[^|]*) ", table)
        assert len(cells) >= len(SUITES[suite]) * 8
        numbers = [float(x) for cell in cells for x in cell.split("±")]
        assert all(math.isfinite(x) for x in numbers), table
        assert f"{len(SUITES[suite])} variants x 2 seeds" in text
        claims = text.split("## Claims\n", 1)[1].split("\n## ", 1)[0]
        assert claims.count("**") == 2 * len(CLAIMS[suite])  # one verdict per claim
        assert (tmp_path / suite / "variants.png").exists()
        for claim in (c for c in CLAIMS[suite] if c.metric == "step_ms_overhead"):
            row = re.escape(claim.text) + r"[^\n]* overhead [+-]\d[^\n]*\(2 interleaved rounds\)"
            assert re.search(row, text) and re.search(row, (tmp_path / "summary.md").read_text())
        if any(v.init_from for v in SUITES[suite]):  # names the run the variants start from
            assert "Every variant starts from [pretrain/" in text and "](../runs/" in text
        if suite in OFFLOAD_SUITES:  # the offloading table, one row per variant, size, policy
            table = text.split("## Offloaded decoding\n", 1)[1].split("\n## ", 1)[0]
            assert table.count("| lru |") == table.count("| prefetch |") == 2 * len(SUITES[suite])
            assert (tmp_path / suite / "hit_rate.png").exists()
    summary = (tmp_path / "summary.md").read_text()
    # one row per claim: a comparison two suites share (`Claim.key`) appears once
    assert summary.count("| **") == len({c.key for claims in CLAIMS.values() for c in claims})


def test_set_overrides_parse_and_apply_to_every_variant():
    extra = experiment_cli.parse_overrides(["train.steps=7", "mesh.expert_parallel=ring"])
    assert extra == {"train.steps": 7, "mesh.expert_parallel": "ring"}
    differences = config_differences("baselines", RunOptions(quick=True, overrides=extra))
    assert all("train.steps" not in diff for diff in differences.values())  # all alike
    from moejax.experiments.suites import variant_config

    config = variant_config(SUITES["baselines"][1], seed=0,
                            options=RunOptions(quick=True, overrides=extra))
    assert config.train.steps == 7 and config.mesh.expert_parallel == "ring"
    with pytest.raises(ValueError, match="no such config field"):
        variant_config(SUITES["baselines"][0], seed=0,
                       options=RunOptions(overrides={"train.stepz": 1}))


def test_a_variants_scale_lengthens_the_default_scale_only():
    """The decisive suite: 1,000 steps at the default scale, a toy run at the quick one (the
    same run as the specialization suite's arm there), its loss claim declared primary."""
    from moejax.experiments.suites import CLAIMS, variant_config

    treated = SUITES["decisive"][1]
    full = variant_config(treated, seed=0)
    assert (full.train.steps, full.train.eval_every, full.loss.sp) == (1000, 250, 2e-3)
    assert variant_config(SUITES["specialization"][0], seed=0).train.steps == 100
    quick = variant_config(treated, seed=0, options=QUICK)
    same = variant_config(SUITES["specialization"][3], seed=0, options=QUICK)
    assert quick.train.steps == 3 and experiment.run_dir(pathlib.Path("/w"), quick) == \
        experiment.run_dir(pathlib.Path("/w"), same)
    loss = CLAIMS["decisive"][0]
    assert loss.primary and loss.paper_effect and loss.better == treated.name


def test_run_dir_ignores_reporting_keys_and_seed_only():
    from moejax.experiments.suites import variant_config

    variant = SUITES["baselines"][0]
    seed0, seed1 = (variant_config(variant, seed=s, options=QUICK) for s in (0, 1))
    seed0.train.report, seed1.train.report = True, False
    workdir = pathlib.Path("/w")
    assert experiment.run_dir(workdir, seed0).parent == experiment.run_dir(workdir, seed1).parent
    seed1.loss.sp = 1e-3  # a computing key: another run
    assert experiment.run_dir(workdir, seed0).parent != experiment.run_dir(workdir, seed1).parent
    key = experiment.run_dir(workdir, seed0)
    seed0.data.new_option = ()  # an option added later, off by default: the same run
    assert experiment.run_dir(workdir, seed0) == key
    seed0.data.new_option = ("email",)
    assert experiment.run_dir(workdir, seed0) != key


def test_finetune_variants_start_from_the_pretrained_export(tmp_path):
    """Fine-tuning arms read the export of the pretraining run (seed 0, 3x the steps, the
    other domains); their run keys do not depend on where DIR lies."""
    tuned = SUITES["finetune"][0]
    keys = []
    for workdir in (tmp_path / "a", tmp_path / "b"):
        config = experiment.suite_config(tuned, workdir, seed=1, options=QUICK)
        source = experiment.suite_config(tuned.init_from, workdir, seed=0, options=QUICK)
        assert config.train.init_from == str(
            experiment.run_dir(workdir.resolve(), source) / experiment.EXPORT_DIR)
        assert source.train.steps == 3 * config.train.steps and source.train.init_from is None
        assert tuple(source.data.exclude_domains) == tuple(config.data.domains) != ()
        keys.append(experiment.run_dir(workdir, config).relative_to(workdir))
    assert keys[0] == keys[1]
    other = experiment.suite_config(SUITES["finetune"][1], tmp_path / "a", seed=1, options=QUICK)
    assert other.train.init_from == config.train.init_from.replace("/b/", "/a/")


def test_run_metrics_reads_the_asked_domains_losses():
    rows = [{"step": 5, "val_loss": 2.0, "eval/domain_names": ["a", "b", "c"],
             "eval/domain_loss": [1.5, float("nan"), 2.5]}, {"step": 6, "loss": 1.0}]
    out = stats.run_metrics(rows, ("c", "b", "zz"))
    assert out["val_loss c"] == 2.5 and math.isnan(out["val_loss b"])
    assert math.isnan(out["val_loss zz"]) and "val_loss a" not in out
