"""Directories written whole or not at all: the one way moejax writes an output directory.

Every writer of a directory (`moejax-export`, `moejax-hf import|export`, `moejax-prepare`)
writes through `atomic_directory(out, overwrite=...)`:

1. it takes an exclusive, non-blocking `flock` on the sibling lock file `<out>.lock` and writes
   its PID there: a second writer of the same destination stops at once with
   `DirectoryBusyError` naming the destination and the holder's PID (the kernel releases the
   lock when its holder exits or is killed, so a killed writer leaves nothing locked);
2. under the lock it clears what a killed writer left beside `out`: its temporary directory
   `.<name>.tmp-<pid>-<hex>` is removed, and an old directory it had moved aside
   (`.<name>.old-<pid>-<hex>`) is put back when `out` is missing (killed between its two
   renames), else removed;
3. the body writes into a new empty sibling `.<name>.tmp-<pid>-<hex>` (same filesystem);
4. when the body returns, every file is synced, the old `out` (with `overwrite`) is renamed
   aside, the new directory renamed to `out`, and only then the old one deleted.

A body that raises leaves `out` as it was, the old complete directory or nothing: the
temporary directory is removed. An `OSError` of the writing (ENOSPC, EDQUOT, EROFS, EIO, one
on a file of the new directory) and any error that says the disk is full (Orbax, ArrayRecord
and safetensors wrap ENOSPC in a ValueError, a RuntimeError and their own exception) become
one `WriteError` of one line, e.g. "no space left on device writing /x/out (nothing was
written; the old moejax export is unchanged)". Other errors pass unchanged.

A command that reports such a failure in one line wraps the write in `quiet_while_writing()`:
what a library prints by itself while it fails (Orbax logs each failed write at ERROR with a
traceback, and its threads leave asyncio "Event loop is closed" tracebacks) is held back and
dropped when the write raises; kept, it is printed when the write succeeds.

A leaf module: it imports nothing of moejax, so every room that writes may use it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import json
import logging
import os
import pathlib
import re
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Iterable, Iterator

LOCK_SUFFIX = ".lock"  # the lock file of destination `out` is `<out>.lock`
_TMP, _OLD = "tmp", "old"  # kinds of hidden siblings: `.<name>.<kind>-<pid>-<hex>`
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG)
_NEARLY_FULL = 64 * 1024  # free bytes below which an errno-less OSError means a full disk
_LOCK_TRIES = 5
_SETTLE_S, _SETTLE_MAX_S = 0.05, 2.0  # a failed write's directory must stay gone this long


class DirectoryBusyError(RuntimeError):
    """Another process (or thread) holds the destination's lock: it is writing it now."""


class WriteError(OSError):
    """Writing the directory failed (disk full, read-only, I/O error); one line, and the
    destination is as it was before (the old directory, or nothing)."""


@contextlib.contextmanager
def atomic_directory(out, *, overwrite: bool = False, what: str = "directory",
                     marks: Iterable[str] = ()) -> Iterator[pathlib.Path]:
    """Yields an empty temporary directory beside `out`; on a normal exit of the body it
    becomes `out` (replacing an old one only then). See the module docstring.

    Args:
      out: the destination directory (its parent is created if missing).
      overwrite: replace an `out` that holds something; otherwise that is refused.
      what: what the directory is, for messages ("moejax export").
      marks: names of which a directory this writer wrote holds at least one (an export:
        config.json, params): with `overwrite`, a non-empty `out` holding none of them is
        not replaced (it is some other directory). Empty: anything is replaced.

    Raises:
      DirectoryBusyError: another writer holds `<out>.lock` (names `out` and its PID).
      FileExistsError: `out` holds something and `overwrite` is False, or none of `marks`.
      WriteError: as the module docstring says.
    """
    out = pathlib.Path(out).expanduser().resolve()
    with _locked(out, what):
        _clear_leftovers(out)
        _check_replaceable(out, overwrite, what, tuple(marks))
        tmp = _new_sibling(out, _TMP)
        try:
            os.mkdir(tmp)
            yield tmp
            _sync_tree(tmp)
            _put_in_place(tmp, out)
        except BaseException as error:
            failure = _write_error(error, out, tmp, what) if isinstance(error, Exception) else None
            _remove_settled(tmp)
            if failure is None or isinstance(error, WriteError):
                raise
            raise failure from error


@contextlib.contextmanager
def quiet_while_writing(loggers: tuple[str, ...] = ("absl", "asyncio")) -> Iterator[None]:
    """For commands (it swaps process-wide hooks): holds the records of `loggers` (Orbax logs
    through absl; its futures through asyncio) and the exceptions Python can only print
    (`sys.unraisablehook`) while the body runs; they are dropped when the body raises (its
    one-line error says what failed; the failed write's garbage is collected first) and
    printed after it when it returns."""
    held, unraisable = [], []
    targets = [logging.getLogger(name) for name in loggers]
    saved = [(target.propagate, _Holder(held)) for target in targets], sys.unraisablehook
    for target, (_, handler) in zip(targets, saved[0], strict=True):
        target.addHandler(handler)
        target.propagate = False
    sys.unraisablehook = unraisable.append
    try:
        yield
    except BaseException:
        gc.collect()  # Orbax's failed futures report themselves when collected
        raise
    finally:
        for target, (propagate, handler) in zip(targets, saved[0], strict=True):
            target.removeHandler(handler)
            target.propagate = propagate
        sys.unraisablehook = saved[1]
    for record in held:
        logging.getLogger(record.name).handle(record)
    for report in unraisable:
        sys.unraisablehook(report)


class _Holder(logging.Handler):
    """Keeps the records it is given."""

    def __init__(self, held: list):
        super().__init__()
        self.held = held

    def emit(self, record: logging.LogRecord) -> None:
        self.held.append(record)


def lock_path(out) -> pathlib.Path:
    """The lock file of destination `out`: `<out>.lock`."""
    out = pathlib.Path(out).expanduser().resolve()
    return out.with_name(out.name + LOCK_SUFFIX)


@contextlib.contextmanager
def _locked(out: pathlib.Path, what: str) -> Iterator[None]:
    """Holds `<out>.lock`; the file is removed (while still locked) on the way out."""
    path = lock_path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = _acquire(path, out)
    except OSError as error:  # e.g. a read-only or full parent: nothing was written
        raise _write_error(error, out, None, what, any_os_error=True) from error
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # a writer that opened it sees another file and retries
        handle.close()


def _acquire(path: pathlib.Path, out: pathlib.Path):
    """Locks `path` -> its open file holding our PID; DirectoryBusyError when held."""
    for _ in range(_LOCK_TRIES):
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle)
            handle.close()
            raise DirectoryBusyError(f"{out} is being written by another process ({holder}); "
                                     "try again when it has finished") from None
        if _same_file(handle, path):  # not a file its last holder removed as we opened it
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
            handle.flush()
            return handle
        handle.close()
    raise DirectoryBusyError(f"{out} is being written by other processes (its lock {path} "
                             "keeps changing); try again when they have finished")


def _same_file(handle, path: pathlib.Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def _holder(handle) -> str:
    """'PID n' (and the host when another) of the lock's holder, read from its file."""
    for _ in range(20):  # the holder writes its PID just after it locks
        handle.seek(0)
        try:
            holder = json.loads(handle.read())
            host = "" if holder["host"] == socket.gethostname() else f" on {holder['host']}"
            return f"PID {holder['pid']}{host}"
        except (ValueError, KeyError, TypeError):
            time.sleep(0.005)
    return "PID unknown"


def _new_sibling(out: pathlib.Path, kind: str) -> pathlib.Path:
    return out.with_name(f".{out.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _clear_leftovers(out: pathlib.Path) -> None:
    """Removes a killed writer's temporary siblings of `out`; puts back an old directory it
    had moved aside when `out` is missing (see the module docstring)."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.({_TMP}|{_OLD})-\d+-[0-9a-f]{{8}}")
    for path in sorted(out.parent.iterdir()):
        found = pattern.fullmatch(path.name)
        if found is None:
            continue
        if found[1] == _OLD and not (out.exists() or out.is_symlink()):
            os.rename(path, out)
            logging.getLogger(__name__).warning(
                "put back %s: a writer was killed while replacing it", out)
        else:
            _remove(path)


def _holds_something(out: pathlib.Path) -> bool:
    if not (out.exists() or out.is_symlink()):
        return False
    return not out.is_dir() or any(out.iterdir())


def _check_replaceable(out: pathlib.Path, overwrite: bool, what: str,
                       marks: tuple[str, ...]) -> None:
    if not _holds_something(out):
        return
    if not overwrite:
        raise FileExistsError(f"{out} is not empty; pass overwrite=True (--overwrite) to "
                              "replace it")
    if marks and not (out.is_dir() and any((out / name).exists() for name in marks)):
        raise FileExistsError(f"{out} is not empty and is not a {what}; it is not replaced "
                              "(move it away or choose another directory)")


def _sync_tree(directory: pathlib.Path) -> None:
    """fsync of every file and directory under `directory` (a late write error shows here)."""
    for root, _, files in os.walk(directory):
        for name in [*files, "."]:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)


def _put_in_place(tmp: pathlib.Path, out: pathlib.Path) -> None:
    """Renames `tmp` to `out`; an old `out` is moved aside first and deleted after."""
    aside = None
    if out.exists() or out.is_symlink():
        aside = _new_sibling(out, _OLD)
        os.rename(out, aside)
    try:
        os.rename(tmp, out)
    except BaseException:
        if aside is not None:
            os.rename(aside, out)
        raise
    with contextlib.suppress(OSError):  # the renames reach the disk
        descriptor = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    if aside is not None:
        _remove(aside)


def _remove_settled(path: pathlib.Path) -> None:
    """Removes a failed write's directory, again while the library threads of that write
    still add files to it (Orbax's do, for a moment after it raised): until it has stayed
    away for _SETTLE_S (at most _SETTLE_MAX_S; the next writer clears what is left)."""
    deadline = time.monotonic() + _SETTLE_MAX_S
    while True:
        shutil.rmtree(path, ignore_errors=True)
        time.sleep(_SETTLE_S)
        if not path.exists() or time.monotonic() > deadline:
            return


def _remove(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _write_error(error: Exception, out: pathlib.Path, tmp: pathlib.Path | None, what: str,
                 *, any_os_error: bool = False) -> WriteError | None:
    """The one-line WriteError for a failure of writing `out`, or None: not a write error
    (`any_os_error`: every OSError is one)."""
    reason, number = _write_reason(error, tmp, any_os_error)
    if reason is None:
        return None
    kept = (f"; the old {what} is unchanged" if _holds_something(out) else "")
    failure = WriteError(f"{reason} writing {out} (nothing was written{kept})")
    failure.errno = number
    return failure


def os_errno(error: BaseException) -> int | None:
    """The errno behind `error`: its own, or its cause's or context's (an OSError), also when
    a library only says it in words (TensorStore's `os_error_code='28'`, "No space left on
    device", "Disk quota exceeded"); None when none is known."""
    for cause in (error, error.__cause__, error.__context__):
        if isinstance(cause, OSError) and cause.errno:
            return cause.errno
        text = " ".join(str(cause or "").split()).lower()
        code = re.search(r"os_error_code='(\d+)'|os error (\d+)", text)
        if code:
            return int(code.group(1) or code.group(2))
        if "disk quota exceeded" in text:
            return errno.EDQUOT
        if "no space left on device" in text:
            return errno.ENOSPC
    return None


def _write_reason(error: Exception, tmp: pathlib.Path | None,
                  any_os_error: bool) -> tuple[str | None, int | None]:
    """(what went wrong, its errno) when `error` is a failure to write, else (None, None)."""
    number = os_errno(error)
    text = " ".join(str(error).split())
    no_space = number in (errno.ENOSPC, errno.EDQUOT)
    if not no_space and type(error) is OSError and number is None and tmp is not None:
        no_space = _free_bytes(tmp.parent) < _NEARLY_FULL  # numpy: "n requested and m written"
    if no_space:
        return "no space left on device", errno.ENOSPC
    if not isinstance(error, OSError):
        return None, None
    inside = tmp is not None and str(error.filename or "").startswith(str(tmp))
    if number not in _WRITE_ERRNOS and not inside and not any_os_error:
        return None, None
    reason = os.strerror(number) if number else text
    return reason[:1].lower() + reason[1:], number


def _free_bytes(directory: pathlib.Path) -> int:
    try:
        stats = os.statvfs(directory)
    except OSError:
        return 1 << 62
    return stats.f_bavail * stats.f_frsize
