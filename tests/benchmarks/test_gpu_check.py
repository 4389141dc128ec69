"""benchmarks/gpu_check.sh --dry-run: the GPU check's steps at toy sizes on the CPU, so that a
GPU session does not spend its device time on a broken script."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_writes_every_result(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OUT_DIR=str(tmp_path))
    env.pop("XLA_FLAGS", None)  # its own processes, as a user runs it
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("kernels_gpu.json", "moe_block_gpu.json", "regularizer_cost_gpu.json",
                 "gpu_pytest.txt"):
        assert (tmp_path / name).exists(), name
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["pytest_gpu_exit_status"] == 0
    assert summary["train"]["step"] == 2 and summary["train"]["tokens_per_s"] > 0
    assert summary["train"]["tflops_per_device"] > 0
