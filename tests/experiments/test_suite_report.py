"""The suite reports and the summary: claims answered from the final numbers, one row per claim
at its largest scale, Holm families and verdict labels."""

import json
import math

import numpy as np

from moejax.experiments import stats, suite_report, summary
from moejax.experiments.suites import CLAIMS, SUITES


def _write(directory, finals, steps=None):
    directory.mkdir(parents=True)
    (directory / "finals.json").write_text(json.dumps(finals))
    if steps is not None:
        (directory / suite_report.SCALE_FILE).write_text(json.dumps({"steps": steps}))


def _rows(text, section):
    """The table rows of the summary's section `section` ("Primary claims", ...)."""
    body = text.split(f"## {section}\n")[1].split("\n## ")[0]
    return [line for line in body.splitlines() if line.startswith("| ") and "---" not in line
            and not line.startswith("| claim")]


def _cells(row):
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_summary_lists_every_claim_of_the_finished_suites(tmp_path):
    names = [v.name for v in SUITES["baselines"]]
    finals = {name: {"val_loss": [2.0 + i, 2.5 + i, 3.0 + i], "routing_entropy": [1.0, 1.1, 1.3]}
              for i, name in enumerate(names)}
    _write(tmp_path / "baselines", finals)
    text = summary.write_summary(tmp_path, SUITES).read_text()
    primary, secondary = _rows(text, "Primary claims"), _rows(text, "Secondary claims")
    assert [_cells(r)[0] for r in primary + secondary] == [c.text for c in CLAIMS["baselines"]]
    assert "specialization" not in text  # unfinished suites are left out
    # lb+sp+cp (index 2) has the higher loss than lb+orth+var (index 1): paired d = -1 exactly
    cells = _cells(primary[0])
    assert cells[2] == "-1 [-1, -1]" and cells[3] == "0" and cells[6] == "**not reproduced**"
    # power: a paired spread of 0 needs the minimum of 2 seeds
    assert ("| lb+sp+cp lowers validation loss vs the orthogonality + variance baselines | "
            "baselines | 0 | 2 |") in text
    _write(tmp_path / "long" / "baselines", finals)  # a longer run's results inside DIR
    text = summary.write_summary(tmp_path, SUITES).read_text()
    primary = _rows(text, "Primary claims")
    assert len(primary) == 1  # one row per claim: same scale, same seeds, the first kept
    assert "[long/baselines](long/baselines/report.md)" == _cells(primary[0])[-1]


def test_largest_scale_row_replaces_the_smaller_ones(tmp_path):
    """A 100-step "not reproduced" stays out of the summary when 1,000 steps are undecided;
    the steps come from scale.json, or from the runs' logs when a results directory has none."""
    claim = CLAIMS["cartesian"][1]  # cartesian degrades less than finegrained (top-1 off)
    short = {name: {"top1_disabled_increase": [0.11, 0.12, 0.10, 0.13],
                    "val_loss": [2.0, 2.1, 2.2, 2.3]} for name in ("cartesian", "topk_share")}
    short["finegrained"] = {"top1_disabled_increase": [0.07, 0.08, 0.06, 0.075],
                            "val_loss": [2.0, 2.1, 2.2, 2.3]}
    long = {name: {"top1_disabled_increase": list(np.add(values, [0.3, -0.2, 0.25, -0.3])),
                   "val_loss": [1.3, 1.2, 1.4, 1.3]}
            for name, values in {"cartesian": [0.38, 0.27, 0.42, 0.51],
                                 "finegrained": [0.44, 0.36, 0.34, 0.30],
                                 "topk_share": [0.39, 0.40, 0.41, 0.38]}.items()}
    _write(tmp_path / "cartesian", short, steps=100)
    _write(tmp_path / "long_1000" / "cartesian", long)
    run = tmp_path / "long_1000" / "runs" / "abc" / "seed_0"
    run.mkdir(parents=True)
    (run.parent / "variants.txt").write_text("cartesian: cartesian\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 500}) + "\n"
                                       + json.dumps({"step": 1000, "val_loss": 1.3}) + "\n")
    assert summary.suite_steps(tmp_path / "long_1000", "cartesian") == 1000
    text = summary.write_summary(tmp_path, SUITES).read_text()
    rows = [r for r in _rows(text, "Primary claims") if _cells(r)[0] == claim.text]
    assert len(rows) == 1 and len(_rows(text, "Primary claims")) == len(CLAIMS["cartesian"])
    cells = _cells(rows[0])
    assert cells[1].startswith("[long_1000/cartesian]") and "1,000 steps, 4 seeds" in cells[1]
    assert cells[6] == "**undecided**" and cells[7] == "[cartesian](cartesian/report.md)"
    alone = suite_report.claim_results("cartesian", short)[1]
    assert stats.family_verdicts([alone.test], [None])[0]["verdict"] == "not reproduced"


def _specialization_finals(seeds=8):
    """Per-seed numbers built so that the six primary claims of the specialization suite get
    each label: topk val loss no effect of the claimed size (margin 0.0048 nats per byte),
    deepseek val loss reproduced, topk specialization not reproduced, deepseek specialization
    undecided, topk step time reproduced, deepseek step time undecided (not timed)."""
    rng = np.random.default_rng(0)
    base = rng.normal(2.0, 0.05, seeds)
    cos = rng.normal(0.004, 0.0005, seeds)
    finals = {v.name: {"val_loss": list(base), "specialization": list(cos),
                       "routing_entropy": list(base)} for v in SUITES["specialization"]}
    finals["topk/lb+sp+cp"]["val_loss"] = list(base + rng.normal(0, 1e-4, seeds))
    finals["deepseek/lb+sp+cp"]["val_loss"] = list(base - 0.05 + rng.normal(0, 1e-3, seeds))
    finals["topk/lb+sp+cp"]["specialization"] = list(cos + 0.001 + rng.normal(0, 1e-5, seeds))
    finals["deepseek/lb+sp+cp"]["specialization"] = list(cos + rng.normal(0, 1e-3, seeds))
    rounds = rng.normal(400.0, 20.0, 6)
    finals["topk/lb"]["step_ms_interleaved"] = list(rounds)
    finals["topk/lb+sp+cp"]["step_ms_interleaved"] = list(rounds * 1.001)
    return finals


def test_summary_holm_family_is_the_primary_claims_and_labels(tmp_path):
    finals = _specialization_finals()
    _write(tmp_path / "specialization", finals, steps=100)
    text = summary.write_summary(tmp_path, SUITES).read_text()
    primary = {_cells(r)[0]: _cells(r) for r in _rows(text, "Primary claims")}
    claims = [c for c in CLAIMS["specialization"] if c.primary]
    assert list(primary) == [c.text for c in claims]
    assert f"; {len(claims)} claims: 2 reproduced, 1 not reproduced, " in text
    want = {"topk: lb+sp+cp lowers validation loss vs lb": "no effect of the claimed size",
            "deepseek: lb+sp+cp lowers validation loss vs lb": "reproduced",
            "topk: lb+sp+cp costs < 2% extra step time": "reproduced"}
    for text_, label in want.items():
        assert primary[text_][6] == f"**{label}**", (text_, primary[text_])
    spec_rows = [primary[c.text] for c in claims if c.metric == "specialization"]
    assert [r[6] for r in spec_rows] == ["**not reproduced**", "**undecided**"]
    # Holm across the primary claims only (the untimed deepseek step time has no p: not counted)
    tests = [suite_report.claim_test(c, finals)[2] for c in claims]
    adjusted = stats.holm([t.p_value for t in tests])
    for claim, p in zip(claims, adjusted, strict=True):
        assert primary[claim.text][4] == suite_report._p(p)  # noqa: SLF001
    assert math.isnan(tests[-1].p_value) and primary[claims[-1].text][4] == "n/a"
    secondary = [_cells(r)[0] for r in _rows(text, "Secondary claims")]
    assert secondary == [c.text for c in CLAIMS["specialization"] if not c.primary]
    # the equivalence margin is paper A's effect per byte
    margin = stats.PAPER_A_LOSS_EFFECT / stats.BPE_BYTES_PER_TOKEN
    assert f"(±{margin:.2g})" in primary["topk: lb+sp+cp lowers validation loss vs lb"][5]


def test_a_claim_in_several_suites_is_declared_alike():
    """The same comparison (`Claim.key`) in two suites has one primary flag and one target."""
    seen = {}
    for claims in CLAIMS.values():
        for claim in claims:
            first = seen.setdefault(claim.key, claim)
            assert (first.primary, first.paper_effect) == (claim.primary, claim.paper_effect)
    assert any(c.primary for claims in CLAIMS.values() for c in claims)


def test_refresh_claims_rewrites_only_the_claims_section(tmp_path):
    finals = _specialization_finals(seeds=4)
    _write(tmp_path / "specialization", finals)
    report = tmp_path / "specialization" / "report.md"
    report.write_text("# Experiment: specialization\n\ntable\n\n## Claims\n\nold rule: "
                      "`moejax/train/experiment_stats.py`\n\n| old |\n\n## What differs\n\n- x\n")
    assert summary.refresh_claims(tmp_path, SUITES) == [report]
    text = report.read_text()
    assert text.startswith("# Experiment: specialization\n\ntable\n\n## Claims\n\n")
    assert text.endswith("\n## What differs\n\n- x\n") and "experiment_stats" not in text
    assert text.count("| topk: ") == len([c for c in CLAIMS["specialization"]
                                          if c.text.startswith("topk: ")])


def test_report_only_rewrites_claims_and_summary_without_training(tmp_path, capsys):
    """`moejax-experiment --report_only`: the finished suite's Claims section and the summary
    from its finals.json; nothing is trained (no runs/ directory appears)."""
    from moejax.cli import experiment

    _write(tmp_path / "specialization", _specialization_finals(seeds=4))
    report = tmp_path / "specialization" / "report.md"
    report.write_text("# Experiment: specialization\n\n## Claims\n\n| old |\n")
    experiment.FLAGS(["moejax-experiment", "--suite", "specialization", "--workdir",
                      str(tmp_path), "--report_only"])
    try:
        assert experiment.main(experiment.FLAGS) == 0
    finally:
        experiment.FLAGS.unparse_flags()  # the module's flags are shared with other tests
    assert "| old |" not in report.read_text() and "| topk: " in report.read_text()
    assert (tmp_path / "summary.md").exists() and not (tmp_path / "runs").exists()
    assert f"rewrote the claims of {report}" in capsys.readouterr().out


def test_step_time_claim_reads_the_interleaved_rounds(tmp_path):
    """The step-time claim is paired by interleaved round (DIR/<suite>/step_time.json), not
    taken from the runs' own step times, which another run's load can shift."""
    ms = {"topk/lb": [100.0, 150.0, 90.0, 120.0], "topk/lb+sp+cp": [101.0, 151.0, 91.0, 121.2]}
    metrics = {c.metric for c in CLAIMS["specialization"]}
    finals = {v.name: {m: [1.0, 1.0] for m in metrics} for v in SUITES["specialization"]}
    for name, rounds in ms.items():
        finals[name]["step_ms"] = [50.0, 500.0] if name == "topk/lb" else [500.0, 50.0]
        finals[name]["step_ms_interleaved"] = rounds
    claim = next(c for c in CLAIMS["specialization"]
                 if c.metric == "step_ms_overhead" and c.better == "topk/lb+sp+cp")
    result = next(r for r in suite_report.claim_results("specialization", finals)
                  if r.claim == claim)
    assert stats.family_verdicts([result.test], [None])[0]["verdict"] == "reproduced"
    assert "(4 interleaved rounds)" in suite_report.shown_effect(result)
    ratios = np.divide(ms["topk/lb+sp+cp"], ms["topk/lb"]) - 1
    assert result.test.improvement == stats.OVERHEAD_LIMIT - np.mean(ratios)


def test_a_longer_run_without_the_claims_metric_does_not_replace_one_with_it(tmp_path):
    """Results from before a claim's metric existed (n/a) leave the row to a smaller scale."""
    names = [v.name for v in SUITES["baselines"]]
    finals = {name: {"val_loss": [2.0 + i, 2.5 + i, 3.0 + i], "routing_entropy": [1.0, 1.1, 1.3]}
              for i, name in enumerate(names)}
    _write(tmp_path / "baselines", finals, steps=100)
    _write(tmp_path / "long" / "baselines",
           {name: {"routing_entropy": [1.0, 1.1, 1.3]} for name in names}, steps=1000)
    text = summary.write_summary(tmp_path, SUITES).read_text()
    rows = _rows(text, "Primary claims") + _rows(text, "Secondary claims")
    loss, entropy = (_cells(row) for row in rows)
    assert loss[1].startswith("[baselines]")
    assert loss[-1] == "[long/baselines](long/baselines/report.md)"  # listed under other scales
    assert entropy[1].startswith("[long/baselines]")  # measured there: the larger scale wins
