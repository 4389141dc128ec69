"""One training run per workdir: a lock held for the whole run.

Process 0 holds an exclusive `flock` on `<workdir>/moejax.lock` while it trains and writes its
holder into the file (`{"host", "pid", "since"}`). The kernel releases the lock when that
process exits or is killed, so:

- a second run on a busy workdir stops at once with `WorkdirBusyError` naming the holder;
- the file left behind by a dead run (SIGKILL, a lost node) is free: the next run takes it
  over and warns, naming the old holder.

Several hosts: only process 0 locks; every process learns its result, so all of them stop
together. On NFS, Linux implements `flock` as a POSIX lock that NFSv4 honours across hosts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pathlib
import socket
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

LOCK_FILE = "moejax.lock"


class WorkdirBusyError(RuntimeError):
    """Another live run holds the workdir."""


def _holder_text(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"host {holder['host']}, PID {holder['pid']}, since {holder['since']}"
    except (ValueError, KeyError, TypeError):
        return "an unknown holder"


def _acquire(path: pathlib.Path):
    """Locks `path` -> the open file, or raises WorkdirBusyError naming the holder."""
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = _holder_text(handle.read())
        handle.close()
        raise WorkdirBusyError(
            f"workdir {path.parent} is in use by another run ({holder}); stop it or use "
            "another --workdir") from None
    handle.seek(0)
    previous = handle.read()
    if previous.strip():
        logging.getLogger(__name__).warning(
            "taking over the lock of a run that did not finish (%s): it no longer runs",
            _holder_text(previous))
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
    handle.flush()
    return handle


def _all_processes_agree(ok: bool) -> bool:
    """Process 0's `ok`, on every process (single process: as given)."""
    if jax.process_count() == 1:
        return ok
    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


@contextlib.contextmanager
def workdir_lock(workdir):
    """Holds the workdir's lock for the body (process 0 locks; see the module docstring).

    Raises:
      WorkdirBusyError: another live run holds the workdir.
    """
    path = pathlib.Path(workdir) / LOCK_FILE
    handle, error = None, None
    if jax.process_index() == 0:
        try:
            handle = _acquire(path)
        except WorkdirBusyError as busy:
            error = busy
    if not _all_processes_agree(error is None):
        raise error or WorkdirBusyError(f"workdir {path.parent} is in use by another run "
                                        "(process 0 could not lock it)")
    try:
        yield
    finally:
        if handle is not None:  # an empty file: nobody holds it, nothing to take over
            handle.seek(0)
            handle.truncate()
            handle.close()
