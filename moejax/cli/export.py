"""moejax-export: `moejax-export --workdir DIR --out DIR [--step N] [--overwrite]`.

Writes the model variables of a training checkpoint (no optimizer or data state) as a plain
Orbax pytree `DIR/params` plus `DIR/config.json`, with the run's tokenizer files (the
workdir's tokenizer/, for a subword `data.tokenizer`) beside them; see
`moejax.models.weights.export`. The directory appears whole or not at all
(`moejax.atomic`): a second export to the same --out while one runs is refused, a full disk
leaves the old export (or nothing), and `--overwrite` replaces an export only when the new
one is complete.

Exit status: 0 written; 1 nothing written (one line: a non-empty --out, another export
writing it, no checkpoint, a full disk); 2 a bad flag.
"""

from __future__ import annotations

import sys

from absl import flags

from moejax.atomic import WriteError, quiet_while_writing
from moejax.cli._command import run_command
from moejax.models.weights import export

USAGE = "moejax-export --workdir DIR --out DIR [--step N] [--overwrite]"
FLAGS = flags.FlagValues()
flags.DEFINE_string("workdir", None, "Training workdir, its checkpoints/ directory or one "
                    "step directory.", flag_values=FLAGS)
flags.DEFINE_string("out", None, "Directory to write params/, config.json and the "
                    "tokenizer's files to.", flag_values=FLAGS)
flags.DEFINE_integer("step", None, "Step to export (default: newest readable).",
                     flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "Replace a non-empty --out.", flag_values=FLAGS)
flags.mark_flags_as_required(["workdir", "out"], flag_values=FLAGS)


def _export(options: flags.FlagValues) -> int:
    try:
        with quiet_while_writing():  # a failed write: its one line below, not Orbax's logs
            out = export(options.workdir, options.out, step=options.step,
                         overwrite=options.overwrite)
    except FileExistsError as error:
        print(f"moejax-export: {error}" if options.overwrite else f"moejax-export: --out "
              f"{options.out} is not empty; pass --overwrite to replace it", file=sys.stderr)
        return 1
    except (FileNotFoundError, RuntimeError, ValueError, WriteError) as error:
        print(f"moejax-export: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    print(f"exported to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the export for `argv` (program name first); returns the exit status."""
    return run_command("moejax-export", USAGE, FLAGS, _export, argv)


def run():
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
