"""The workdir lock: a busy workdir, or a checkpoints directory another run writes to, stops a
second run at once; a dead run's lock is taken over; an unusable workdir is named."""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from moejax.train.workdir_lock import LOCK_FILE, WorkdirBusyError, WorkdirError, workdir_lock

HOLD = ("import sys, time; from moejax.train.workdir_lock import workdir_lock\n"
        "with workdir_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(120)")


def test_second_holder_is_refused_naming_the_first(tmp_path):
    with workdir_lock(tmp_path):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(WorkdirBusyError, match=f"host {holder['host']}, PID {os.getpid()}"):
            with workdir_lock(tmp_path):
                pass
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released: nothing to take over


def test_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path, caplog):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirBusyError, match=f"PID {process.pid},"):
            with workdir_lock(tmp_path):
                pass
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    with caplog.at_level(logging.WARNING), workdir_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"PID {process.pid}," in caplog.text and "taking over" in caplog.text


def test_a_checkpoints_directory_two_workdirs_lead_to_is_locked_once(tmp_path):
    """b/checkpoints is a symlink to a/checkpoints: while a run holds either workdir, the other
    is refused, naming the directory and the holder; a third workdir of its own is free."""
    (tmp_path / "a" / "checkpoints").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "checkpoints").symlink_to(tmp_path / "a" / "checkpoints")
    for held, refused in (("a", "b"), ("b", "a")):
        with workdir_lock(tmp_path / held):
            with pytest.raises(WorkdirBusyError, match=rf"checkpoints directory "
                               rf"{tmp_path / 'a' / 'checkpoints'}.* is in use by another run "
                               rf"\(host {socket.gethostname()}, PID {os.getpid()}\)"):
                with workdir_lock(tmp_path / refused):
                    pass
            with workdir_lock(tmp_path / "c"):
                pass
        assert (tmp_path / refused / LOCK_FILE).read_text() == ""  # released on refusal


def test_checkpoints_made_for_a_run_that_saved_nothing_are_removed(tmp_path):
    with workdir_lock(tmp_path / "empty"):
        assert (tmp_path / "empty" / "checkpoints").is_dir()
    assert not (tmp_path / "empty" / "checkpoints").exists()
    with workdir_lock(tmp_path / "saved"):
        (tmp_path / "saved" / "checkpoints" / "1").mkdir()
    assert (tmp_path / "saved" / "checkpoints" / "1").is_dir()


@pytest.mark.parametrize("make, message", [
    (lambda w: w.write_text("x"), "workdir {w} is a file, not a directory"),
    (lambda w: (w.mkdir(), (w / "checkpoints").write_text("x")),
     "{w}/checkpoints is not a directory"),
    (lambda w: (w.mkdir(), (w / "checkpoints").symlink_to(w / "gone")),
     "{w}/checkpoints is a symlink to {w}/gone, which does not exist"),
])
def test_a_workdir_that_cannot_hold_a_run_is_named(tmp_path, make, message):
    workdir = tmp_path / "w"
    make(workdir)
    with pytest.raises(WorkdirError, match=re.escape(message.format(w=workdir))):
        with workdir_lock(workdir):
            pass
