"""The trainer: runs, resumes bitwise, saves on SIGTERM, stops on a non-finite loss."""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from moejax.models.decoder import decoder_spec_from_config
from moejax.models.param_count import model_flops_per_token
from moejax.train import step as step_module
from moejax.train.config_files import load_config
from moejax.train.trainer import train_and_evaluate
from tests.train.helpers import (
    CONFIGS,
    ROOT,
    interrupted_after_two_steps,
    logged_steps,
    metrics_rows,
    tiny_config,
)


def _losses(workdir):
    return {row["step"]: row["loss"] for row in metrics_rows(workdir)}


TRAIN_FIELDS = {"step", "loss", "total_loss", "grad_norm", "learning_rate", "goodput",
                "time/compile_s", "time/eval_s", "time/checkpoint_s",
                *(f"aux/{name}{part}" for name in ("lb", "sp", "cp")
                  for part in ("", "/per_router")),
                *(f"routing/{name}" for name in (
                    "dead_experts", "dropped_fraction", "entropy", "load_cv", "load_max",
                    "load_min", "pathway_entropy", "specialization", "tokens_per_expert",
                    "topk_mass", "transitions"))}
EVAL_FIELDS = {"val_loss", "val_bits_per_byte", "val_perplexity", "val_loss_top1_disabled",
               "eval/tokens", "eval/bytes",
               "eval/domain_names", "eval/domain_loss", "eval/domain_tokens",
               "eval/routing/domain_counts", "eval/routing/domain_nmi",
               "eval/routing/dropped_fraction", "eval/routing/dropped_fraction_top1_disabled"}


def _check_metrics_rows(rows, config):
    """The fields README lists, in every row, with values that mean what they say."""
    from moejax.train.optim import learning_rate_schedule
    from moejax.train.specs import train_spec_from_config

    schedule = learning_rate_schedule(train_spec_from_config(config))
    slots = config.train.batch_size * config.train.seq_len * config.model.moe.top_k
    for row in rows:
        # step 1 compiles: its interval (log_every=1) has no training step to time
        timed = ({"step_ms", "tokens_per_s", "tflops_per_device", "mfu"} if row["step"] > 1
                 else set())
        evaluated = EVAL_FIELDS if row["step"] == config.train.steps else set()
        assert set(row) == TRAIN_FIELDS | timed | evaluated, set(row) ^ (TRAIN_FIELDS | timed)
        assert row["learning_rate"] == pytest.approx(float(schedule(row["step"])), rel=1e-6)
        assert row["grad_norm"] > 0 and 0 <= row["goodput"] < 1
        assert row["total_loss"] > row["loss"]  # the weighted regularizers are in it
        assert len(row["aux/lb/per_router"]) == 2 and len(row["aux/cp/per_router"]) == 1
        assert [sum(load) for load in row["routing/tokens_per_expert"]] == [slots, slots]
        if row["step"] > 1:
            assert row["tokens_per_s"] > 0
            flops = model_flops_per_token(decoder_spec_from_config(config.model),
                                          config.train.seq_len)
            assert row["tflops_per_device"] == pytest.approx(
                flops * row["tokens_per_s"] / jax.device_count() / 1e12, rel=1e-9)
            assert row["mfu"] == pytest.approx(row["tflops_per_device"]
                                               / config.train.peak_tflops)


def test_tiny_trains_logs_checkpoints_and_reports(tmp_path):
    config = tiny_config(report=True, eval_top1_disabled=True, peak_tflops=0.5,
                         profile_steps=(2, 3))
    last = train_and_evaluate(config, tmp_path)
    rows = metrics_rows(tmp_path)
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    _check_metrics_rows(rows, config)
    assert last["step"] == 4 and np.isfinite(last["val_loss"])
    assert np.isfinite(last["val_loss_top1_disabled"])
    per_domain, tokens = np.array(last["eval/domain_loss"]), np.array(last["eval/domain_tokens"])
    assert len(per_domain) == len(last["eval/domain_names"]) and tokens.sum() > 0
    assert np.isnan(per_domain[tokens == 0]).all()  # domains the batches did not hold
    np.testing.assert_allclose(np.nansum(per_domain * tokens) / tokens.sum(), last["val_loss"],
                               rtol=1e-5)  # the batches' mean loss, regrouped by domain
    assert len(last["eval/routing/domain_nmi"]) == 2  # one per router
    assert last["eval/routing/dropped_fraction"] == [0.0, 0.0]  # dropless: nothing dropped
    assert last["eval/routing/dropped_fraction_top1_disabled"] == [0.0, 0.0]
    assert (tmp_path / "report.md").exists() and (tmp_path / "plots" / "loss.png").exists()
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [2, 3, 4]
    assert list((tmp_path / "profile").rglob("*.xplane.pb"))  # the jax.profiler trace


def test_evaluation_counts_capacity_drops(tmp_path):
    """Half the slots fit at capacity_factor 0.5: evaluation reports the drops per router, with
    and without the top-1 expert (the robustness test is not silently short of experts)."""
    config = tiny_config(steps=1, eval_top1_disabled=True)
    config.model.moe.update(engine="capacity", capacity_factor=0.5)
    last = train_and_evaluate(config, tmp_path)
    for key in ("eval/routing/dropped_fraction", "eval/routing/dropped_fraction_top1_disabled"):
        assert len(last[key]) == 2 and all(0.45 <= value < 1.0 for value in last[key]), key


@pytest.mark.parametrize("resume_mesh", [{"devices": 1}, {"devices": 2, "data": 1, "fsdp": 2}])
def test_checkpoint_from_an_expert_parallel_mesh_restores_on_another(tmp_path, resume_mesh):
    """2 steps on data=2 x expert=2 (ring of experts), then resume on one device or on an
    fsdp=2 mesh: the same losses as a straight single-device run."""
    import jax

    straight = tmp_path / "straight"
    train_and_evaluate(tiny_config(steps=3, batch_size=4), straight)
    config = tiny_config(steps=3, batch_size=4)
    config.mesh.update(devices=4, data=2, expert=2, expert_parallel="ring")
    sharded = tmp_path / "sharded"
    interrupted_after_two_steps(config, sharded)
    resumed = tiny_config(steps=3, batch_size=4)
    resumed.mesh.update(**resume_mesh)
    last = train_and_evaluate(resumed, sharded)
    assert last["step"] == 3 and len(jax.devices()) == 8
    assert logged_steps(sharded) == [1, 2, 3]  # resumed at 3, not retrained from 1
    np.testing.assert_allclose(list(_losses(sharded).values()),
                               list(_losses(straight).values()), rtol=1e-5)


def test_gradient_accumulation_through_the_trainer(tmp_path):
    """batch_size 4 as 2 micro-batches equals one pass over the 4 rows with the global load
    balance (grad norm of step 1, losses after), and differs with the micro-batch one: the
    trainer really splits the batch."""
    def run(name, micro_batches, variant):
        config = tiny_config(steps=2, batch_size=4, grad_accumulation=micro_batches)
        config.loss.update(lb=1.0, lb_variant=variant)
        train_and_evaluate(config, tmp_path / name)
        rows = metrics_rows(tmp_path / name)
        return np.array([rows[0]["grad_norm"], rows[0]["aux/lb"], rows[1]["loss"]])

    whole, accumulated, micro = run("whole", 1, "global"), run("two", 2, "global"), \
        run("micro", 2, "batch")
    np.testing.assert_allclose(accumulated, whole, rtol=1e-5)
    assert np.abs(micro - whole).max() > 100 * np.abs(accumulated - whole).max()


@pytest.mark.parametrize("metrics, named", [
    ({"loss": np.float32("nan")}, "loss (nan)"),
    ({"total_loss": np.float32("inf")}, "total_loss (inf)"),
    ({"finite_state": np.bool_(False)}, "updated parameters"),
])
def test_nan_guard_reads_the_loss_and_the_updated_state(tmp_path, metrics, named):
    """The guard's other inputs (the gradient norm runs through a whole run above); with no
    checkpoint yet it says a rerun starts from scratch."""
    from moejax.train.checkpoint import Checkpointer
    from moejax.train.trainer import NonFiniteError, _check_finite

    finite = {"loss": np.float32(2.0), "total_loss": np.float32(2.1),
              "grad_norm": np.float32(0.5), "finite_state": np.bool_(True)}
    with Checkpointer(tmp_path, async_save=False) as checkpointer:
        _check_finite(dict(finite), 7, checkpointer)
        with pytest.raises(NonFiniteError, match=rf"non-finite {re.escape(named)} at step 7; .*"
                                                 "none: a rerun starts from scratch"):
            _check_finite({**finite, **metrics}, 7, checkpointer)


def test_busy_workdir_stops_a_second_run_before_any_work(tmp_path):
    """A second trainer on a workdir another run holds stops at once: nothing written."""
    from moejax.train.workdir_lock import WorkdirBusyError, workdir_lock

    with workdir_lock(tmp_path):
        with pytest.raises(WorkdirBusyError, match=f"in use by another run .*PID {os.getpid()}"):
            train_and_evaluate(tiny_config(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moejax.lock"]


def test_tensorboard_events_are_written(tmp_path):
    last = train_and_evaluate(tiny_config(steps=2, tensorboard=True), tmp_path)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    np.testing.assert_allclose(last["val_perplexity"], np.exp(last["val_loss"]), rtol=1e-6)


def test_resume_is_bitwise_identical(tmp_path, capsys):
    """4 steps in one run == 2 steps, an interruption, and a resume to 4 (same schedule)."""
    straight, halves2 = tmp_path / "straight", tmp_path / "halves"
    train_and_evaluate(tiny_config(steps=4), straight)
    interrupted_after_two_steps(tiny_config(steps=4), halves2)
    capsys.readouterr()
    train_and_evaluate(tiny_config(steps=4), halves2)  # resumes at step 2
    assert "resumed from step 2 (" in capsys.readouterr().out
    assert logged_steps(halves2) == [1, 2, 3, 4]
    assert _losses(halves2) == _losses(straight)


@pytest.mark.parametrize("poisoned, value, named, every, saved, logged", [
    # NaN weights while the loss is fine; every step logged and saved: checked at once
    ("grad_norm", np.float32("inf"), "grad_norm (inf)", 1, [1, 2], [1, 2, 3, 4]),
    # steps 1 and 3 neither logged nor saved: their flags are read after the next step is
    # queued, and step 3's still stops the run before anything after it is saved
    ("finite_state", np.bool_(False), "updated parameters", 2, [2], [2, 4]),
])
def test_non_finite_step_stops_unsaved_and_resumes(tmp_path, monkeypatch, poisoned, value,
                                                    named, every, saved, logged):
    """A step whose loss, gradient norm or updated parameters are not finite is not saved;
    the error names the newest saved step, which is what a rerun resumes from."""
    from moejax.train.trainer import NonFiniteError

    original = step_module.train_step
    calls = []

    def poison_third_step(*args, **kwargs):
        metrics = original(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            metrics[poisoned] = value
        return metrics

    monkeypatch.setattr(step_module, "train_step", poison_third_step)
    with pytest.raises(NonFiniteError, match=rf"non-finite {re.escape(named)} at step 3; "
                                             r"stopped without saving it\. .* step 2 \("):
        train_and_evaluate(tiny_config(log_every=every, checkpoint_every=every), tmp_path)
    assert len(calls) == (3 if every == 1 else 4)  # deferred: step 4 was queued first
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == saved
    monkeypatch.setattr(step_module, "train_step", original)
    last = train_and_evaluate(tiny_config(log_every=every, checkpoint_every=every), tmp_path)
    assert last["step"] == 4
    assert logged_steps(tmp_path) == logged  # the resumed run went on from step 2


def test_sigterm_saves_and_resumes(tmp_path):
    overrides = ["--config.train.steps=1000", "--config.train.checkpoint_every=1000",
                 "--config.train.log_every=1", "--config.train.progress=False",
                 "--config.train.report=False", "--config.train.async_checkpoint=False"]
    command = [sys.executable, "-m", "moejax.cli.train", "--config",
               str(CONFIGS / "tiny.py"), "--workdir", str(tmp_path), *overrides]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not metrics.exists() or len(_losses(tmp_path)) < 3):
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, output  # stopped, not finished
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir()]
    assert len(saved) == 1 and 3 <= saved[0] < 1000, (saved, output)
    assert f"moejax-train: signal {int(signal.SIGTERM)}: saved step {saved[0]} and stopped" \
        in output
    assert metrics_rows(tmp_path)[-1]["step"] == saved[0]  # logged, and saved before any evaluation
    assert not any("val_loss" in row for row in metrics_rows(tmp_path))
    config = tiny_config(steps=saved[0] + 1)
    last = train_and_evaluate(config, tmp_path)
    assert last["step"] == saved[0] + 1
    assert logged_steps(tmp_path) == list(range(1, saved[0] + 2))  # one more step, no rerun


@pytest.mark.parametrize("name", ["default.py", "deepseek_tiny.py", "cartesian_base.py:small",
                                  "finegrained_base.py:small", "topk_share_base.py:small"])
def test_every_preset_trains_a_step(tmp_path, name):
    path, _, arg = name.partition(":")
    config = load_config(CONFIGS / path, arg or None)
    config.train.update(steps=1, batch_size=2, seq_len=16, eval_batches=1, progress=False,
                        report=False, async_checkpoint=False, eval_top1_disabled=False)
    config.mesh.devices = 1  # one device: sharded training is tested in tests/parallel
    last = train_and_evaluate(config, tmp_path)
    assert last["step"] == 1 and np.isfinite(last["loss"])
