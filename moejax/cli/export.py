"""moejax-export: `moejax-export --workdir DIR --out DIR [--step N] [--overwrite]`.

Writes the model variables of a training checkpoint (no optimizer or data state) as a plain
Orbax pytree `DIR/params` plus `DIR/config.json`, with the run's tokenizer files (the
workdir's tokenizer/, for a subword `data.tokenizer`) beside them; see
`moejax.models.weights.export`.
"""

from __future__ import annotations

import sys

from absl import flags

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
        out = export(options.workdir, options.out, step=options.step,
                     overwrite=options.overwrite)
    except FileExistsError:
        print(f"moejax-export: --out {options.out} is not empty; pass --overwrite to replace "
              "it", file=sys.stderr)
        return 1
    except (FileNotFoundError, RuntimeError, ValueError) as error:
        print(f"moejax-export: {error}", file=sys.stderr)
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
