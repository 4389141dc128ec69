"""One training run per workdir and per checkpoints directory: locks held for the whole run.

Process 0 holds an exclusive `flock` on `<workdir>/moejax.lock` while it trains and writes its
holder into the file (`{"host", "pid", "since"}`). It also holds one on the directory its
checkpoints really go to: `<workdir>/checkpoints` with its symlinks resolved, so that two
workdirs whose `checkpoints` lead to one directory cannot train into it at once (Orbax would
skip one run's saves and mix the two runs' steps). The kernel releases both when that process
exits or is killed, so:

- a second run on a busy workdir, or on a checkpoints directory another live run writes to,
  stops at once with `WorkdirBusyError` naming the holder;
- the file left behind by a dead run (SIGKILL, a lost node) is free: the next run takes it
  over and warns, naming the old holder.

Before locking, the workdir is checked (`WorkdirError`, one line naming the path): it is a
directory or can be made one, it is writable, and `checkpoints` is a directory, or a symlink
to one that exists and is writable, or absent (then it is made, and removed again at the end
if the run saved nothing into it).

Several hosts: only process 0 checks and locks; every process learns its result, so all of
them stop together. On NFS, Linux implements `flock` on files as a POSIX lock that NFSv4
honours across hosts; a filesystem that cannot lock a directory is warned about once and the
checkpoints directory is then covered by the workdir lock only.
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

from moejax.models.weights import CHECKPOINTS

LOCK_FILE = "moejax.lock"


class WorkdirBusyError(RuntimeError):
    """Another live run holds the workdir, or writes to its checkpoints directory."""


class WorkdirError(ValueError):
    """The workdir cannot hold a run: a file, read-only, or a dangling `checkpoints` link."""


def _holder_text(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"host {holder['host']}, PID {holder['pid']}, since {holder['since']}"
    except (ValueError, KeyError, TypeError):
        return "an unknown holder"


def _acquire(path: pathlib.Path):
    """Locks `path` -> the open file, or raises WorkdirBusyError naming the holder."""
    try:
        handle = path.open("a+")
    except OSError as error:
        raise WorkdirError(f"workdir {path.parent}: cannot write its lock file {path} "
                           f"({error.strerror}); use a writable --workdir") from None
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


def _writable(path: pathlib.Path) -> bool:
    """The process may create files in directory `path` (a read-only mount answers no, even
    to root)."""
    return os.access(path, os.W_OK | os.X_OK)


def check_workdir(workdir: pathlib.Path) -> None:
    """Makes `workdir` if needed and checks that a run can write there.

    Raises:
      WorkdirError: `workdir` is a file, cannot be made, or is read-only; names the path.
    """
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"workdir {workdir} is a file, not a directory; pass a directory "
                           "as --workdir")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WorkdirError(f"workdir {workdir} cannot be made ({error.strerror}); pass "
                           "another --workdir") from None
    if not _writable(workdir):
        raise WorkdirError(f"workdir {workdir} is read-only: the run writes its lock, metrics "
                           "and checkpoints there; pass a writable --workdir")


def checkpoints_directory(workdir: pathlib.Path) -> tuple[pathlib.Path, bool]:
    """Where `<workdir>/checkpoints` really leads (symlinks resolved), made if absent.

    Returns:
      (the resolved directory, whether it was made here).

    Raises:
      WorkdirError: `checkpoints` is a dangling symlink, not a directory, cannot be made, or
        leads to a read-only directory; names the path.
    """
    link = workdir / CHECKPOINTS
    made = False
    if link.is_symlink() and not link.exists():
        raise WorkdirError(f"{link} is a symlink to {os.readlink(link)}, which does not exist: "
                           "make that directory or remove the link")
    if link.exists() and not link.is_dir():
        raise WorkdirError(f"{link} is not a directory; move it away or use another --workdir")
    if not link.exists():
        try:
            link.mkdir()
        except OSError as error:
            raise WorkdirError(f"{link} cannot be made ({error.strerror})") from None
        made = True
    target = link.resolve()
    if not _writable(target):
        raise WorkdirError(f"checkpoints directory {target}{_leads(link)} is read-only; make "
                           "it writable or use another --workdir")
    return target, made


def _leads(link: pathlib.Path) -> str:
    """' (where LINK leads)' for a symlink, else ''."""
    return f" (where {link} leads)" if link.is_symlink() else ""


def _flock_holder(fd: int) -> str:
    """'host H, PID P' of the process holding a flock on `fd`'s file (from /proc/locks, this
    host only), or 'an unknown holder'."""
    stat = os.fstat(fd)
    inode = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if "FLOCK" in fields and "->" not in fields and inode in fields:
                pid = fields[fields.index(inode) - 1]
                return f"host {socket.gethostname()}, PID {pid}"
    return "an unknown holder"


def _lock_directory(target: pathlib.Path, where: str) -> int | None:
    """An exclusive flock on directory `target` -> its descriptor (None: the filesystem
    cannot lock directories, warned about).

    Raises:
      WorkdirBusyError: another live run holds it; names the holder.
    """
    fd = None
    try:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _flock_holder(fd)
        os.close(fd)
        raise WorkdirBusyError(f"checkpoints directory {target}{where} is in use by another run "
                               f"({holder}); give each run its own checkpoints directory") from None
    except OSError as error:
        if fd is not None:
            os.close(fd)
        logging.getLogger(__name__).warning(
            "cannot lock the checkpoints directory %s (%s): only the workdir lock guards it",
            target, error.strerror)
        return None
    return fd


class _Held:
    """The locks process 0 holds (and the checkpoints directory it made), released in
    reverse order."""

    def __init__(self):
        self.handle, self.directory_fd, self.made = None, None, None

    def release(self) -> None:
        if self.made is not None:  # made here and still empty: the run saved nothing
            with contextlib.suppress(OSError):
                self.made.rmdir()  # while still locked: no run can have taken it meanwhile
        if self.directory_fd is not None:
            os.close(self.directory_fd)
        if self.handle is not None:  # an empty file: nobody holds it, nothing to take over
            self.handle.seek(0)
            self.handle.truncate()
            self.handle.close()
        self.handle, self.directory_fd, self.made = None, None, None


def _lock_checkpoints(workdir: pathlib.Path, held: _Held) -> None:
    """Checks `<workdir>/checkpoints` and locks the directory it leads to into `held`."""
    target, made = checkpoints_directory(workdir)
    held.made = target if made else None
    held.directory_fd = _lock_directory(target, _leads(workdir / CHECKPOINTS))


def _all_processes_agree(ok: bool) -> bool:
    """Process 0's `ok`, on every process (single process: as given)."""
    if jax.process_count() == 1:
        return ok
    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


@contextlib.contextmanager
def workdir_lock(workdir):
    """Checks the workdir and holds its locks for the body (process 0; see the module
    docstring).

    Raises:
      WorkdirError: the workdir or its checkpoints directory cannot hold a run.
      WorkdirBusyError: another live run holds the workdir or its checkpoints directory.
    """
    workdir = pathlib.Path(workdir)
    path = workdir / LOCK_FILE
    held, error = _Held(), None
    if jax.process_index() == 0:
        try:
            check_workdir(workdir)
            handle = _acquire(path)
            held.handle = handle
            _lock_checkpoints(workdir, held)
        except (WorkdirBusyError, WorkdirError) as failure:
            held.release()
            error = failure
    if not _all_processes_agree(error is None):
        raise error or WorkdirBusyError(f"workdir {workdir}: process 0 could not check or lock "
                                        "it (its error names why)")
    if jax.process_index() != 0:  # process 0 made it; on a filesystem of its own, here too
        workdir.mkdir(parents=True, exist_ok=True)
    try:
        yield
    finally:
        held.release()
