"""The suite reports: each claim's verdict from the final numbers, and the summary."""

import json

from moejax.experiments import suite_report
from moejax.experiments.suites import CLAIMS, SUITES


def test_summary_lists_every_claim_of_the_finished_suites(tmp_path):
    names = [v.name for v in SUITES["baselines"]]
    finals = {name: {"val_loss": [2.0 + i, 2.5 + i, 3.0 + i], "routing_entropy": [1.0, 1.1, 1.3]}
              for i, name in enumerate(names)}
    (tmp_path / "baselines").mkdir()
    (tmp_path / "baselines" / "finals.json").write_text(json.dumps(finals))
    text = suite_report.write_summary(tmp_path, SUITES).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| [baselines]")]
    assert len(rows) == len(CLAIMS["baselines"])
    assert "specialization" not in text.split("| suite")[1]  # unfinished suites are left out
    # lb+sp+cp (index 2) has the higher loss than lb+orth+var (index 1): paired d = -1 exactly
    assert "| -1 ± 0 | **not reproduced** |" in rows[0]
    # power: a paired spread of 0 needs the minimum of 2 seeds
    assert ("| baselines | lb+sp+cp lowers validation loss vs the orthogonality + variance "
            "baselines | 0 | 2 |") in text
    (tmp_path / "long" / "baselines").mkdir(parents=True)  # a longer run's results inside DIR
    (tmp_path / "long" / "baselines" / "finals.json").write_text(json.dumps(finals))
    text = suite_report.write_summary(tmp_path, SUITES).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| [long/baselines]")]
    assert len(rows) == len(CLAIMS["baselines"]) and "(long/baselines/report.md)" in rows[0]


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
    results = {c.text: r for c, *r in suite_report.claim_results("specialization", finals)}
    *_, shown, label = results[claim.text]
    assert label == "reproduced" and "(4 interleaved rounds)" in shown, shown
