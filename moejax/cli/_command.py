"""One way to run a command: its flags in a `FlagValues` of its own, parsed by `run_command`.

Every command module defines `FLAGS = flags.FlagValues()` and its flags at import (with
`flag_values=FLAGS`), and a `main(flag_values) -> exit status`; its console-script entry
point is `run()`, which calls `run_command`. A private `FlagValues` lets any two commands be
imported in one process (tests do), although several define `--workdir` or `--config`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import flags, logging

HELP_ARGS = ("--help", "-h", "--helpfull")


def parse(name: str, usage: str, flag_values: flags.FlagValues, argv: list[str]) -> int | None:
    """Parses argv (program name first) into flag_values.

    Returns:
      None when parsed; else the exit status after printing the help (0) or a one-line
      usage error (2) naming the command.
    """
    if any(arg in HELP_ARGS for arg in argv[1:]):
        print(f"usage: {usage}\n\n{flag_values.get_help()}")
        return 0
    flag_values.unparse_flags()  # every call starts from the defaults
    try:
        extra = flag_values(argv)[1:]
        if extra:
            raise flags.Error(f"unexpected arguments: {' '.join(extra)}")
        for value in flag_values.flag_values_dict().values():
            getattr(value, "keys", None)  # a config file that failed to load raises here
    except Exception as error:  # noqa: BLE001 - a config file is user code: any error
        print(f"{name}: {_one_line(error, argv[1:])}", file=sys.stderr)
        return 2
    return None


def _config_path(argv: list[str]) -> str | None:
    """The value of --config in argv (`--config X` or `--config=X`), or None."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


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
