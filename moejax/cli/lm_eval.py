"""moejax-lm-eval: lm-evaluation-harness's command line with the `moejax` model registered.

  moejax-lm-eval --model moejax --model_args export=DIR [--tasks ...] [any lm-eval option]
  moejax-lm-eval ls tasks          (every lm-eval subcommand: run, ls, validate)

lm-eval 0.4.13's `lm-eval` command loads no model class from another package, so this is
`lm_eval.__main__.cli_evaluate` with "moejax" registered first, lazily: lm-eval's registry
imports `moejax.evaluation.lm_eval` when a run asks for `--model moejax` (`ls tasks`,
`validate` and `--help` do not load it). The arguments go to lm-eval unchanged. The model's options
(`--model_args export=DIR|workdir=DIR|hf=DIR,tokenizer=...,batch_size=N,max_length=N,...`)
are described in `moejax.evaluation.lm_eval`.

Exit status: lm-eval's (0, or 2 for a usage error); 1 with a one-line error naming the
option for a model that cannot be loaded or run (a ValueError, FileNotFoundError or
RuntimeError, from moejax or lm-eval), and when lm-eval is not installed
(`pip install 'moejax[lmeval]'`). `--help` prints this command's usage line before lm-eval's.
"""

from __future__ import annotations

import sys

PROG = "moejax-lm-eval"
MODEL = "moejax"
TARGET = "moejax.evaluation.lm_eval:MoejaxLM"  # lm-eval's lazy "module:object" placeholder
INSTALL = "pip install 'moejax[lmeval]' (lm-eval >= 0.4.13)"
USAGE = f"usage: {PROG} --model moejax --model_args export=DIR --tasks TASKS [lm-eval options]"
HELP_ARGS = ("-h", "--help")


def register() -> None:
    """Registers the `moejax` model with lm-eval's model registry, without importing it (the
    registry imports TARGET on first use); a no-op when it is registered already."""
    from lm_eval.api.registry import model_registry

    if MODEL not in model_registry:
        model_registry.register(MODEL, target=TARGET)


def _help(argv: list[str], installed: bool) -> None:
    """For --help: this command's usage line (lm-eval's help follows when installed)."""
    if any(arg in HELP_ARGS for arg in argv[1:]):
        more = "lm-eval's help follows." if installed else f"lm-eval is not installed: {INSTALL}"
        print(f"{USAGE}\n\nlm-eval's command line with moejax's model registered; {more}\n")


def _evaluate(argv: list[str]) -> int:
    """lm-eval's entry point on argv (it reads sys.argv, restored after); its exit status."""
    from lm_eval.__main__ import cli_evaluate

    saved, sys.argv = sys.argv, [PROG, *argv[1:]]
    try:
        cli_evaluate()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"{PROG}: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    finally:
        sys.argv = saved
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs lm-eval's command line on `argv` (program name first; default sys.argv) with the
    moejax model registered; returns the exit status (module docstring)."""
    argv = list(sys.argv if argv is None else argv)
    try:
        register()
    except ImportError:
        _help(argv, installed=False)
        if any(arg in HELP_ARGS for arg in argv[1:]):
            return 0
        print(f"{PROG}: lm-eval is not installed: {INSTALL}", file=sys.stderr)
        return 1
    _help(argv, installed=True)
    return _evaluate(argv)


def run():
    """Console-script entry point."""
    sys.exit(main())
