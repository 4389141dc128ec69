"""moejax-export: `moejax-export --workdir DIR --out DIR [--step N] [--overwrite]`.

Writes the model variables of a training checkpoint (no optimizer or data state) as a plain
Orbax pytree `DIR/params` plus `DIR/config.json`; see `moejax.train.checkpoint.export`.
The flags live in their own `FlagValues`, so this module can be imported next to
`moejax.train.main` (which also defines --workdir).
"""

from __future__ import annotations

import sys

from absl import flags


def _flag_values() -> flags.FlagValues:
    values = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "Training workdir, its checkpoints/ directory or one "
                        "step directory.", flag_values=values)
    flags.DEFINE_string("out", None, "Directory to write params/ and config.json to.",
                        flag_values=values)
    flags.DEFINE_integer("step", None, "Step to export (default: newest readable).",
                         flag_values=values)
    flags.DEFINE_bool("overwrite", False, "Replace a non-empty --out.", flag_values=values)
    flags.mark_flags_as_required(["workdir", "out"], flag_values=values)
    return values


def main(argv: list[str] | None = None) -> int:
    """Runs the export for `argv` (program name first); returns the exit status."""
    argv = list(sys.argv if argv is None else argv)
    values = _flag_values()
    if any(arg in ("--help", "-h", "--helpfull") for arg in argv[1:]):
        print(f"usage: moejax-export --workdir DIR --out DIR [--step N] [--overwrite]\n\n"
              f"{values.get_help()}")
        return 0
    try:
        extra = values(argv)[1:]
        if extra:
            raise flags.Error(f"unexpected arguments: {' '.join(extra)}")
    except flags.Error as error:
        print(f"moejax-export: {error}", file=sys.stderr)
        return 2
    from moejax.train.checkpoint import export

    try:
        out = export(values.workdir, values.out, step=values.step, overwrite=values.overwrite)
    except (FileNotFoundError, FileExistsError, RuntimeError) as error:
        print(f"moejax-export: {error}", file=sys.stderr)
        return 1
    print(f"exported to {out}")
    return 0


def run():
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
