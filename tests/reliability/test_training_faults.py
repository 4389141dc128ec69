"""Reliability, round three: where checkpoints really go, saves that are not written, workdirs
that cannot hold a run, and a run extended on resume.

Each case goes through `moejax.cli.train.main` where the exit status and the one line on stderr
are the point. "Before any work" is checked by making the data check (the first work of a run)
fail the test if it is reached.
"""

import errno
import json
import os
import socket
import stat
import types

import numpy as np
import orbax.checkpoint as ocp
import pytest

from moejax.cli import train as cli
from moejax.reporting import metrics as metrics_module
from moejax.reporting.metrics import MetricsWriter
from moejax.train import run_data
from moejax.train.checkpoint import Checkpointer
from moejax.train.optim import learning_rate_schedule
from moejax.train.specs import train_spec_from_config
from moejax.train.trainer import train_and_evaluate
from moejax.train.workdir_lock import workdir_lock
from tests.train.helpers import interrupted_after_two_steps, metrics_rows, tiny_config

NO_SPACE = os.strerror(errno.ENOSPC)


def _main(config, workdir) -> int:
    """moejax-train's main on a config object (the flags it reads, their defaults)."""
    options = types.SimpleNamespace(
        config=config, workdir=str(workdir), init_from=None, dry_run=False, debug=False,
        coordinator_address=None, num_processes=None, process_id=None,
        distributed_cluster=False)
    return cli.main(options)


def _error_lines(capsys) -> list[str]:
    """moejax-train's lines on stderr; no traceback may be there."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("moejax-train:")]


@pytest.fixture
def no_work(monkeypatch):
    """The data check, a run's first work, fails the test if reached."""
    def reached(*args, **kwargs):
        raise AssertionError("the run started work")

    monkeypatch.setattr(run_data, "check_data", reached)


@pytest.mark.parametrize("holder", ["plain", "linked"])
def test_two_workdirs_whose_checkpoints_lead_to_one_directory_do_not_train_at_once(
        tmp_path, capsys, no_work, holder):
    """Workdir b's `checkpoints` is a symlink to a's: while one of them trains (holds its
    locks), the other stops before any work, exit 3, naming the directory and the holder."""
    plain, linked = tmp_path / "a", tmp_path / "b"
    (plain / "checkpoints").mkdir(parents=True)
    linked.mkdir()
    (linked / "checkpoints").symlink_to(plain / "checkpoints")
    running, second = (plain, linked) if holder == "plain" else (linked, plain)
    where = f" (where {linked / 'checkpoints'} leads)" if second == linked else ""
    with workdir_lock(running):
        assert _main(tiny_config(steps=1), second) == 3
    assert _error_lines(capsys) == [
        f"moejax-train: checkpoints directory {plain / 'checkpoints'}{where} is in use by "
        f"another run (host {socket.gethostname()}, PID {os.getpid()}); give each run its own "
        "checkpoints directory"]
    assert sorted(p.name for p in second.iterdir()) == ["checkpoints", "moejax.lock"]
    assert list((plain / "checkpoints").iterdir()) == []


def _fail_step_two(monkeypatch, how: str) -> None:
    """Orbax's save of step 2 raises ENOSPC, returns False (skipped), or is queued and fails
    in the background: then every later wait raises (as Orbax's does) with TensorStore's
    message."""
    save, failed = ocp.CheckpointManager.save, []

    def failing_save(self, step, *args, **kwargs):
        if step == 2 and how == "enospc":
            raise OSError(errno.ENOSPC, NO_SPACE)
        if step == 2 and how == "skipped":
            return False
        if step == 2:  # async: queued, nothing reaches the disk
            failed.append(step)
            return True
        return save(self, step, *args, **kwargs)

    wait = ocp.CheckpointManager.wait_until_finished

    def failing_wait(self):
        wait(self)
        if failed:
            raise ValueError("RESOURCE_EXHAUSTED: Error writing ...: Failed to write 33389 bytes"
                             " to file 9: No space left on device [os_error_code='28']\nmore")

    monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
    monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", failing_wait)


@pytest.mark.parametrize("how, logged", [("enospc", [1, 2]), ("skipped", [1, 2]),
                                         ("async_enospc", [1, 2, 3])],
                         ids=["enospc", "skipped", "async_enospc"])
def test_a_checkpoint_that_is_not_written_stops_the_run_at_its_step(tmp_path, capsys,
                                                                    monkeypatch, how, logged):
    """A save that fails (a full disk) or that Orbax skips: exit 5 and one line naming the
    step and the last complete checkpoint; an asynchronous save's failure surfaces at the next
    save and names its own step. Every metrics row is whole."""
    _fail_step_two(monkeypatch, how)
    config = tiny_config(steps=3, async_checkpoint=how.startswith("async"))
    assert _main(config, tmp_path) == 5
    directory = tmp_path / "checkpoints"
    reason = (NO_SPACE if how != "skipped" else
              "Orbax skipped the save (the newest step it lists there is 1: another run "
              "writing there?)")
    assert _error_lines(capsys) == [
        f"moejax-train: the checkpoint of step 2 could not be written to {directory}: {reason}; "
        f"the last complete checkpoint is step 1 ({directory / '1'}), where a rerun resumes"]
    assert sorted(p.name for p in directory.iterdir() if p.name.isdigit()) == ["1"]
    assert [row["step"] for row in metrics_rows(tmp_path)] == logged


def test_a_metrics_row_the_disk_does_not_take_is_missing_not_cut(tmp_path, capsys,
                                                                  monkeypatch):
    """A short write (a full disk) of step 2's row: the file keeps row 1 only, whole, and the
    run stops with exit 5 naming the step and the last complete checkpoint."""
    write = os.write

    def short_write(fd, data):
        if data.startswith(b'{"step": 2,'):
            return write(fd, data[:len(data) // 2])
        return write(fd, data)

    monkeypatch.setattr(metrics_module.os, "write", short_write)
    assert _main(tiny_config(steps=2), tmp_path) == 5
    assert _error_lines(capsys) == [
        f"moejax-train: the metrics row of step 2 could not be written to {tmp_path}: "
        f"{NO_SPACE}; the last complete checkpoint is step 1 ({tmp_path / 'checkpoints' / '1'}),"
        " where a rerun resumes"]
    text = (tmp_path / "metrics.jsonl").read_text()
    assert text.endswith("\n") and [json.loads(line)["step"] for line in
                                     text.splitlines()] == [1]


def test_the_metrics_writer_undoes_a_failed_write(tmp_path, monkeypatch):
    writer = MetricsWriter(tmp_path)
    writer.write(1, {"loss": 1.0})
    before = (tmp_path / "metrics.jsonl").read_bytes()

    def no_space(fd, data):
        os.ftruncate(fd, os.fstat(fd).st_size + 7)  # part of the row reached the disk
        raise OSError(errno.ENOSPC, NO_SPACE)

    monkeypatch.setattr(metrics_module.os, "write", no_space)
    with pytest.raises(OSError, match=NO_SPACE):
        writer.write(2, {"loss": 0.5})
    writer.close()
    assert (tmp_path / "metrics.jsonl").read_bytes() == before


def _read_only(path, monkeypatch) -> None:
    """Mode 0o555; for root, whom the mode does not stop, `os.access` answers as a read-only
    mount does."""
    path.mkdir()
    path.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    if os.geteuid() == 0:
        access = os.access

        def read_only_access(target, mode, *args, **kwargs):
            if os.path.realpath(target) == os.path.realpath(path) and mode & os.W_OK:
                return False
            return access(target, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", read_only_access)


@pytest.mark.parametrize("case", ["file", "read_only", "dangling_checkpoints"])
def test_a_workdir_that_cannot_hold_a_run_is_one_line_before_any_work(tmp_path, capsys,
                                                                      monkeypatch, no_work,
                                                                      case):
    workdir = tmp_path / "work"
    if case == "file":
        workdir.write_text("notes")
        message = f"workdir {workdir} is a file, not a directory; pass a directory as --workdir"
    elif case == "read_only":
        _read_only(workdir, monkeypatch)
        message = (f"workdir {workdir} is read-only: the run writes its lock, metrics and "
                   "checkpoints there; pass a writable --workdir")
    else:
        workdir.mkdir()
        (workdir / "checkpoints").symlink_to(tmp_path / "gone")
        message = (f"{workdir / 'checkpoints'} is a symlink to {tmp_path / 'gone'}, which does "
                   "not exist: make that directory or remove the link")
    try:
        assert _main(tiny_config(steps=1), workdir) == 2
    finally:
        if workdir.is_dir():
            workdir.chmod(0o755)
    assert _error_lines(capsys) == [f"moejax-train: {message}"]
    assert not (tmp_path / "gone").exists()


def test_extending_a_run_on_resume_keeps_every_planned_learning_rate(tmp_path):
    """A 4-step run stopped after step 2 and resumed with train.steps=6: steps 1-4 have the
    4-step run's learning rates (the cosine is not stretched over 6), steps 5 and 6 the final
    one; the checkpoints keep the horizon for the next resume."""
    planned = tiny_config(steps=4, warmup_steps=1)
    interrupted_after_two_steps(planned, tmp_path)
    train_and_evaluate(tiny_config(steps=6, warmup_steps=1), tmp_path)
    rates = {row["step"]: row["learning_rate"] for row in metrics_rows(tmp_path)}
    schedule = learning_rate_schedule(train_spec_from_config(planned))
    final = planned.train.learning_rate * planned.train.min_lr_ratio
    np.testing.assert_allclose([rates[s] for s in range(1, 7)],
                               [float(schedule(s)) for s in range(1, 5)] + [final, final],
                               rtol=1e-6)
    assert rates[3] > 1.5 * final  # step 3 is on the way down, not at the end
    with Checkpointer(tmp_path) as checkpointer:
        kept = checkpointer.saved_config()["train"]
    assert (kept["steps"], kept["decay_steps"]) == (6, 4)
