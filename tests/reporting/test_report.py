"""moejax-report: plots and report.md from a synthetic metrics.jsonl; skips and errors."""

import json
import logging
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from moejax.reporting import plots, report

ROUTERS = 3
EXPERTS = 6
DOMAINS = ("code", "math", "prose")
STEPS = (10, 20, 30, 40, 50)
EVAL_STEPS = (30, 50)
PNG_HEADER = b"\x89PNG\r\n\x1a\n"
ALL_PLOTS = ("loss.png", "tokens_per_expert.png", "entropy.png", "specialization.png",
             "transitions.png", "expert_domain.png", "val_loss_domains.png", "training.png")
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _routing(rng, routers):
    """routing/... keys of one logged step for `routers` routers (as the trainer logs them)."""
    per_router = lambda low, high: rng.uniform(low, high, routers).tolist()  # noqa: E731
    tokens = rng.integers(0, 200, (routers, EXPERTS))
    row = {
        "routing/entropy": per_router(0.5, 1.8), "routing/topk_mass": per_router(0.3, 0.9),
        "routing/load_cv": per_router(0.0, 1.0), "routing/load_min": tokens.min(1).tolist(),
        "routing/load_max": tokens.max(1).tolist(),
        "routing/dead_experts": (tokens == 0).sum(1).tolist(),
        "routing/dropped_fraction": per_router(0.0, 0.1),
        "routing/specialization": per_router(0.0, 0.5),
        "routing/tokens_per_expert": tokens.tolist(),
    }
    if routers >= 2:
        row["routing/pathway_entropy"] = rng.uniform(0, 1, routers - 1).tolist()
        row["routing/transitions"] = rng.integers(0, 30, (routers - 1, EXPERTS, EXPERTS)).tolist()
    return row


def _eval(rng, routers):
    counts = rng.integers(0, 50, (routers, EXPERTS, len(DOMAINS)))
    return {
        "val_loss_top1_disabled": float(rng.uniform(4, 5)),
        "eval/routing/domain_counts": counts.tolist(),
        "eval/routing/domain_nmi": rng.uniform(0, 1, routers).tolist(),
        "eval/domain_names": list(DOMAINS),
        "eval/domain_loss": rng.uniform(3, 4, len(DOMAINS)).tolist(),
        "eval/domain_tokens": rng.integers(1, 100, len(DOMAINS)).tolist(),
    }


def _write_metrics(workdir, *, routers=ROUTERS, routing=True, domains=True):
    """metrics.jsonl of 5 logged steps, 2 evaluated; final loss 2.5, val losses 3.25 then 3.5."""
    rng = np.random.default_rng(0)
    rows = []
    for step in STEPS:
        row = {"step": step, "loss": float(rng.uniform(3, 6)), "grad_norm": float(rng.uniform()),
               "tokens_per_s": 12345.6, "aux/lb": float(rng.uniform()),
               "aux/lb/per_router": rng.uniform(0, 1, routers).tolist()}
        if routing:
            row.update(_routing(rng, routers))
        if step in EVAL_STEPS:
            row["val_loss"] = 3.25 if step == 30 else 3.5
            row["val_bits_per_byte"] = row["val_loss"] / np.log(2.0)
            if domains:
                row.update(_eval(rng, routers))
        rows.append(row)
    rows[-1]["loss"] = 2.5
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_full_report_writes_all_plots_and_final_numbers(tmp_path):
    rows = _write_metrics(tmp_path)
    path = report.write_report(tmp_path)
    assert path == tmp_path / "report.md"
    for name in ALL_PLOTS:
        png = (tmp_path / "plots" / name).read_bytes()
        assert png.startswith(PNG_HEADER) and len(png) > 5000, name
    text = path.read_text()
    assert "| final train loss (step 50) | 2.5000 |" in text
    assert "| best val loss (step 30) | 3.2500 |" in text
    assert "| final val loss (step 50) | 3.5000 |" in text
    entropy = rows[-1]["routing/entropy"]
    per_router = ", ".join(f"{v:.4f}" for v in entropy)
    assert f"| routing entropy, nats (step 50) | {np.mean(entropy):.4f} (per router: " \
           f"{per_router}) |" in text
    disabled = rows[-1]["val_loss_top1_disabled"]
    assert f"{disabled:.4f} ({disabled - 3.5:+.4f} vs val loss)" in text
    for key in ("specialization", "load CV", "dropped fraction", "pathway entropy", "domain NMI"):
        assert key in text
    for name in ALL_PLOTS:
        assert f"(plots/{name})" in text
    assert "Skipped" not in text


def test_domains_the_evaluation_did_not_see_are_named(tmp_path):
    """A domain with no token in the last evaluation: the report warns, naming it, and the
    expert-by-domain map leaves its column out instead of drawing zeros."""
    rows = _write_metrics(tmp_path)
    counts = np.asarray(rows[-1]["eval/routing/domain_counts"])
    counts[:, :, 1] = 0
    rows[-1]["eval/routing/domain_counts"] = counts.tolist()
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    text = report.write_report(tmp_path).read_text()
    assert f"**Warning:** 1 domains have no token in the last evaluation's batches, so the " \
           f"domain NMI and the expert-by-domain map say nothing about them: {DOMAINS[1]}." in text
    assert (tmp_path / "plots" / "expert_domain.png").read_bytes().startswith(PNG_HEADER)
    _write_metrics(tmp_path)
    assert "Warning" not in report.write_report(tmp_path).read_text()


@pytest.mark.parametrize("kwargs, drawn, skipped", [
    (dict(routing=False, domains=False), ("loss.png", "training.png"), ALL_PLOTS[1:7]),
    (dict(routers=1, domains=False), ALL_PLOTS[:4] + ("training.png",),
     ("transitions.png", "expert_domain.png", "val_loss_domains.png")),
])
def test_missing_keys_skip_plots_with_a_reason(tmp_path, kwargs, drawn, skipped):
    _write_metrics(tmp_path, **kwargs)
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "transitions.png").write_bytes(b"stale")
    text = report.write_report(tmp_path).read_text()
    assert "| final train loss (step 50) | 2.5000 |" in text
    for name in drawn:
        assert (tmp_path / "plots" / name).read_bytes().startswith(PNG_HEADER)
    for name in skipped:
        assert not (tmp_path / "plots" / name).exists()
        assert f"- `{name}` skipped: " in text
    if "transitions.png" in skipped:
        assert "needs >= 2 routers" in text


def test_missing_or_empty_metrics_is_a_clear_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with pytest.raises(FileNotFoundError, match=str(path)):
        report.write_report(tmp_path)
    path.write_text("\n")
    with pytest.raises(ValueError, match=f"{path} is empty"):
        report.write_report(tmp_path)
    path.write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "lo\n{"step": 3, "loss": 2.0}\n')
    with pytest.raises(ValueError, match=f"{path}:2 is not a JSON object"):
        report.write_report(tmp_path)


def test_a_cut_off_last_line_is_skipped_and_a_resume_drops_later_rows(tmp_path, caplog):
    """A run killed while writing leaves a partial last line: the reader skips it (the report
    of a finished run does not crash); a resumed run keeps the rows up to its restored step."""
    from moejax.reporting.metrics import keep_rows_through, read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(f'{{"step": {s}, "loss": {s}.5}}\n' for s in (1, 2, 3)) + '{"st')
    with caplog.at_level(logging.WARNING):
        assert [row["step"] for row in read_metrics(path)] == [1, 2, 3]
    assert f"{path}:4 is cut off" in caplog.text
    assert keep_rows_through(path, 2) == 2  # step 3 and the partial line
    assert path.read_text() == '{"step": 1, "loss": 1.5}\n{"step": 2, "loss": 2.5}\n'
    assert keep_rows_through(path, 2) == 0


def test_cli(tmp_path):
    code = ("import sys; from moejax.cli.report import run; "
            "sys.argv = ['moejax-report'] + sys.argv[1:]; run()")
    missing = subprocess.run([sys.executable, "-c", code, "--workdir", str(tmp_path)],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert missing.returncode != 0
    assert f"no metrics file at {tmp_path / 'metrics.jsonl'}" in missing.stderr
    _write_metrics(tmp_path, routing=False, domains=False)
    done = subprocess.run([sys.executable, "-c", code, "--workdir", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "report.md")


def test_seed_band_is_mean_and_sample_std_on_the_common_steps():
    # seeds log steps 1-3 and 2-4: steps 2, 3 are common; values (2, 4) and (3, 6)
    curves = [(np.array([1, 2, 3]), np.array([1.0, 2.0, 3.0])),
              (np.array([2, 3, 4]), np.array([4.0, 6.0, 8.0]))]
    steps, mean, std = plots.seed_band(curves)
    np.testing.assert_array_equal(steps, [2, 3])
    np.testing.assert_allclose(mean, [3.0, 4.5])
    np.testing.assert_allclose(std, [2 / np.sqrt(2), 3 / np.sqrt(2)])
    np.testing.assert_array_equal(plots.seed_band(curves[:1])[2], [0.0, 0.0, 0.0])


def test_variant_curves_include_validation_loss_with_its_seed_band(tmp_path):
    """The suites' variants.png draws validation loss beside train loss, each variant's mean
    over seeds ± the sample std (one evaluation at the end: a single point)."""
    runs = {"a": [[{"step": 10, "loss": 2.0}, {"step": 20, "loss": 1.5, "val_loss": 1.6}],
                  [{"step": 10, "loss": 2.2}, {"step": 20, "loss": 1.7, "val_loss": 1.8}]],
            "b": [[{"step": 10, "loss": 2.1}, {"step": 20, "loss": 1.6}]]}
    curves = plots.variant_curves(runs)
    steps, mean, std = curves["val_loss"]["a"]
    np.testing.assert_array_equal(steps, [20])
    np.testing.assert_allclose(mean, [1.7])
    np.testing.assert_allclose(std, [0.2 / np.sqrt(2)])
    assert set(curves["val_loss"]) == {"a"} and set(curves["loss"]) == {"a", "b"}
    assert plots.plot_variants(runs, tmp_path / "v.png") is None and (tmp_path / "v.png").exists()
