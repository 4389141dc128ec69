"""The moejax-train CLI: --dry-run, overrides and errors."""

import pathlib
import subprocess
import sys

import pytest

from moejax.train.config_files import load_config
from moejax.train.specs import specs_from_config

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _cli(*args):
    code = "import sys; from moejax.cli.train import run; sys.argv = ['moejax-train'] + " \
           f"{list(args)!r}; run()"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_dry_run_prints_counts_and_applies_overrides(tmp_path):
    out = _cli("--config", "configs/tiny.py", "--workdir", str(tmp_path), "--dry-run",
               "--config.model.moe.top_k=3")
    assert out.returncode == 0, out.stderr
    assert "top_k: 3" in out.stdout and "active parameters per token: " in out.stdout
    assert "plan: 1 x cpu, mesh {'data': 1, 'fsdp': 1, 'expert': 1, 'tensor': 1}" in out.stdout
    assert "memory per device: " in out.stdout and "FLOPs per step: " in out.stdout
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing ran


def test_dry_run_counts_a_real_size_preset_without_building_it():
    from moejax.cli.train import dry_run

    config = load_config(ROOT / "configs" / "cartesian_base.py")
    text = dry_run(config, specs_from_config(config), compile_step=False)
    assert "total parameters: 842065176" in text


MOE_OPTIONS = ", ".join(load_config(ROOT / "configs" / "tiny.py").model.moe)


@pytest.mark.parametrize("args, message", [
    (["--config", "configs/nope.py"], "--config: cannot load configs/nope.py: [Errno 2] No such "
                                      "file or directory: 'configs/nope.py'"),
    (["--config", "configs/tiny.py", "--config.model.moe.no_such=1"],
     f"--config.model.moe.no_such: no such option; model.moe has: {MOE_OPTIONS}"),
])
def test_bad_config_is_one_line_naming_it(tmp_path, args, message):
    """A missing config file or an override of an option it does not have: one line, no
    traceback, exit 2, before any work."""
    out = _cli(*args, "--workdir", str(tmp_path), "--dry-run")
    assert out.returncode == 2
    assert out.stderr == f"moejax-train: {message}\n" and out.stdout == ""


@pytest.mark.parametrize("option, message", [
    ("--config.model.moe.top_k=99", "moe.top_k=99 must be in [1, moe.num_experts=6]"),
    ("--config.train.steps=0", "train.steps=0; allowed: an integer >= 1"),
])
def test_bad_option_is_one_line_naming_it(tmp_path, option, message):
    out = _cli("--config", "configs/tiny.py", option, "--workdir", str(tmp_path), "--dry-run")
    assert out.returncode == 2
    assert out.stderr == f"moejax-train: {message}\n" and out.stdout == ""
