"""Multi-host: settings from flags or environment, and two processes on localhost (gloo).

Two `moejax-train` processes with 4 CPU devices each train tiny on one 8-device mesh; their
losses equal a single process on 8 devices, and a single process resumes their checkpoint.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from moejax.parallel.distributed import DistributedSpec, distributed_spec
from moejax.train.config_files import load_config
from moejax.train.trainer import train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[2]
OVERRIDES = {"mesh.devices": -1, "mesh.data": -1, "train.batch_size": 8, "train.log_every": 1,
             "train.eval_every": 100, "train.checkpoint_every": 1,
             "train.async_checkpoint": False, "train.progress": False, "train.report": False,
             "train.min_lr_ratio": 1.0}  # constant rate after warmup: 3 steps = 3 of 4 steps


def test_flags_override_environment_and_environment_fills_in():
    environ = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert distributed_spec(environ=environ) == DistributedSpec("h:1", 4, 3)
    assert distributed_spec("x:2", None, 0, environ=environ) == DistributedSpec("x:2", 4, 0)
    assert not distributed_spec(environ={}).requested


@pytest.mark.parametrize("values, message", [
    (dict(coordinator_address="h:1"), "missing: num_processes, process_id"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), "allowed: 0..1"),
])
def test_incomplete_or_bad_settings_are_clear_errors(values, message):
    with pytest.raises(ValueError, match=message):
        distributed_spec(**values, environ={})


def _config(steps):
    config = load_config(ROOT / "configs" / "tiny.py")
    for key, value in dict(OVERRIDES, **{"train.steps": steps}).items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def _losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_and_one_resumes_their_checkpoint(tmp_path):
    workdir, port = tmp_path / "two", _free_port()
    command = [sys.executable, "-m", "moejax.cli.train", "--config", str(ROOT / "configs/tiny.py"),
               "--workdir", str(workdir), "--config.train.steps=3",
               f"--coordinator_address=localhost:{port}", "--num_processes=2"]
    command += [f"--config.{key}={value}" for key, value in OVERRIDES.items()]
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="4", JAX_PLATFORMS="cpu")
    processes = [subprocess.Popen(command + [f"--process_id={index}"], env=env, cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for index in range(2)]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]

    straight = tmp_path / "straight"
    train_and_evaluate(_config(4), straight)  # one process, 8 devices
    np.testing.assert_allclose(_losses(workdir), _losses(straight)[:3], rtol=1e-5)
    last = train_and_evaluate(_config(4), workdir)  # resumes the two-process checkpoint
    assert last["step"] == 4
    np.testing.assert_allclose(_losses(workdir), _losses(straight), rtol=1e-5)
