"""One way to run a command: its flags in a `FlagValues` of its own, parsed by `run_command`.

Every command module defines `FLAGS = flags.FlagValues()` and its flags at import (with
`flag_values=FLAGS`), and a `main(flag_values) -> exit status`; its console-script entry
point is `run()`, which calls `run_command`. A private `FlagValues` lets any two commands be
imported in one process (tests do), although several define `--workdir` or `--config`.

A `--config` file is Python run while the flags are parsed: any error it raises is one line
naming it (exit status 2), and so is a call to `sys.exit` (`--config configs/x.py: the config
file called sys.exit(0)`) and a file still running after CONFIG_SECONDS (60 s; SIGALRM, on
the main thread only: `run_command` called from another thread sets no limit).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable

from absl import flags, logging

HELP_ARGS = ("--help", "-h", "--helpfull")
CONFIG_SECONDS = 60  # the longest parsing the flags (running a --config file) may take


class _ConfigTimeout(BaseException):
    """Parsing ran past CONFIG_SECONDS (a BaseException: a config file's `except Exception`
    does not swallow it)."""


def parse(name: str, usage: str, flag_values: flags.FlagValues, argv: list[str]) -> int | None:
    """Parses argv (program name first) into flag_values.

    Returns:
      None when parsed; else the exit status after printing the help (0) or a one-line
      usage error (2) naming the command: a bad flag, or a --config file that failed, called
      `sys.exit` or ran longer than CONFIG_SECONDS.
    """
    if any(arg in HELP_ARGS for arg in argv[1:]):
        print(f"usage: {usage}\n\n{flag_values.get_help()}")
        return 0
    flag_values.unparse_flags()  # every call starts from the defaults
    config = _config_path(argv)
    where = f"--config {config}: the config file" if config else "parsing the flags"
    try:
        with _time_limit(CONFIG_SECONDS):
            message = _parse_or_error(flag_values, argv)
    except _ConfigTimeout:
        message = f"{where} ran longer than {CONFIG_SECONDS} s; stopped"
    except SystemExit as exit_:
        message = f"{where} called sys.exit({exit_.code!r})"
    if message is None:
        return None
    print(f"{name}: {message}", file=sys.stderr)
    return 2


def _parse_or_error(flag_values: flags.FlagValues, argv: list[str]) -> str | None:
    """Parses argv into flag_values: None, or the error as one line naming the option."""
    try:
        argv = _resolve_config(argv, flag_values)  # a shipped config's name -> its file
        extra = flag_values(argv)[1:]
        if extra:
            raise flags.Error(f"unexpected arguments: {' '.join(extra)}")
        for value in flag_values.flag_values_dict().values():
            getattr(value, "keys", None)  # a config file that failed to load raises here
    except Exception as error:  # noqa: BLE001 - a config file is user code: any error
        return _one_line(error, argv[1:])
    return None


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raises _ConfigTimeout in the body once it has run `seconds` (SIGALRM; no limit off
    the main thread, where no signal handler can be installed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise _ConfigTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)


def _config_path(argv: list[str]) -> str | None:
    """The value of --config in argv (`--config X` or `--config=X`), or None."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _resolve_config(argv: list[str], flag_values: flags.FlagValues) -> list[str]:
    """argv with --config's value as a file (`config_files.resolve_config`: an existing file,
    else a shipped config's name such as `default` or `default:arg`)."""
    if "config" not in flag_values or _config_path(argv) is None:
        return argv
    from moejax.train import config_files  # only commands with --config get here

    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + config_files.resolve_config(arg.split("=", 1)[1])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = config_files.resolve_config(out[i + 1])
    return out


def _unknown_override(argv: list[str]) -> str | None:
    """`--config.a.b: no such option; a has: ...` for the first override that names a key the
    config file does not have, or None (no such override, or the file does not load)."""
    from moejax.train import config_files  # only commands with --config get here

    try:
        file, _, file_arg = (_config_path(argv) or "").partition(":")
        config = config_files.load_config(file, file_arg or None)
    except Exception:  # noqa: BLE001 - then the original error is reported
        return None
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        option = arg.split("=", 1)[0]
        node, path = config, option.removeprefix("--config.").split(".")
        for depth, key in enumerate(path):
            if not hasattr(node, "keys") or key not in node:
                where = ".".join(path[:depth]) or "the config"
                has = ", ".join(node) if hasattr(node, "keys") else "no options"
                return f"{option}: no such option; {where} has: {has}"
            node = node[key]
    return None


def _one_line(error: BaseException, argv: list[str]) -> str:
    """A flag or config error as one line naming the option."""
    text = str(error)
    if isinstance(error, (AttributeError, KeyError)):
        found = _unknown_override(argv)
        if found:
            return found
    if "Traceback (most recent call last)" in text:  # a config file's own error, as
        lines = [line.strip() for line in text.splitlines() if line.strip()]  # ml_collections
        return f"--config {_config_path(argv)}: {lines[-1]}"  # reports it: its last line
    if isinstance(error, OSError) and "config" in text.lower():
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return f"--config: cannot load {_config_path(argv)}: {lines[-1]}"
    return " ".join(text.split()) or type(error).__name__


def run_command(name: str, usage: str, flag_values: flags.FlagValues,
                main: Callable[[flags.FlagValues], int | None],
                argv: list[str] | None = None) -> int:
    """Parses the flags, then returns `main(flag_values)` (None counts as 0)."""
    argv = list(sys.argv if argv is None else argv)
    status = parse(name, usage, flag_values, argv)
    if status is not None:
        return status
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    return main(flag_values) or 0
