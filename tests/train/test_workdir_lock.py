"""The workdir lock: a busy workdir stops a second run at once; a dead run's lock is taken over."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys

import pytest

from moejax.train.workdir_lock import LOCK_FILE, WorkdirBusyError, workdir_lock

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
