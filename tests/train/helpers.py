"""Helpers shared by the trainer's tests (tests/train/, tests/reliability/): the tiny config
for tests, the metrics rows a run wrote, and a run interrupted after two steps."""

import json
import pathlib

import pytest

from moejax.train import step as step_module
from moejax.train.config_files import load_config
from moejax.train.trainer import train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def tiny_config(steps=4, **train):
    """configs/tiny.py for tests: checkpoints every step, synchronous; evaluates only at the
    end and without the top-1 test unless asked (each evaluation mode compiles once)."""
    config = load_config(CONFIGS / "tiny.py")
    config.train.update(dict(dict(steps=steps, log_every=1, eval_every=100, checkpoint_every=1,
                                  async_checkpoint=False, progress=False, report=False,
                                  eval_top1_disabled=False), **train))
    return config


def metrics_rows(workdir):
    """The rows of `workdir`/metrics.jsonl, in file order, as dicts."""
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def logged_steps(workdir):
    """The steps of metrics.jsonl in file order: a resumed run continues, never restarts."""
    return [row["step"] for row in metrics_rows(workdir)]


def interrupted_after_two_steps(config, workdir):
    """Runs `config` in `workdir` and kills the run (KeyboardInterrupt) at its third step."""
    original = step_module.train_step
    calls = []

    def stop_after_two(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    step_module.train_step = stop_after_two
    try:
        with pytest.raises(KeyboardInterrupt):
            train_and_evaluate(config, workdir)
    finally:
        step_module.train_step = original
