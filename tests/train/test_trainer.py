"""Smoke test: configs/tiny.py trains a few steps and writes metrics.jsonl."""

import json
import pathlib

import numpy as np

from moejax.train.config_files import load_config
from moejax.train.trainer import train_and_evaluate

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def test_tiny_trains_and_logs(tmp_path):
    config = load_config(CONFIGS / "tiny.py")
    config.train.steps = 2
    last = train_and_evaluate(config, tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 2 and lines[-1] == last
    assert np.isfinite(last["loss"]) and np.isfinite(last["val_loss"])


def test_every_preset_builds_a_spec():
    from moejax.layers.decoder import decoder_spec_from_config

    for path in sorted(CONFIGS.glob("*.py")):
        spec = decoder_spec_from_config(load_config(path).model)
        assert spec.num_layers >= 1, path
