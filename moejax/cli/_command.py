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
    except flags.Error as error:
        print(f"{name}: {error}", file=sys.stderr)
        return 2
    return None


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
