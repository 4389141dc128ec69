"""moejax-experiment: run a suite of matched variants over seeds and write its report.

    moejax-experiment --suite specialization|cartesian|...|decisive|all --workdir DIR
                      [--seeds N] [--quick] [--set KEY=VALUE ...]

The suites are in `moejax/experiments/suites.py`, the runner in `runner.py`, the reports in
`suite_report.py`, the summary in `summary.py`.

Exit status: 0 done; 2 a bad flag or option (one line naming it); 3 a run directory is in use
by another run, e.g. a second moejax-experiment on the same DIR (one line naming the run's
directory and the holder of its lock, `moejax/train/workdir_lock.py`; the runs finished
before it are kept, so rerunning the command later continues).
"""

from __future__ import annotations

import ast
import contextlib
import os
import sys
import tempfile

import jax
from absl import flags

from moejax.cli._command import run_command
from moejax.experiments.runner import run_suite
from moejax.experiments.suite_report import write_suite_report
from moejax.experiments.suites import SUITES, RunOptions
from moejax.experiments.summary import refresh_claims, write_summary
from moejax.train.workdir_lock import WorkdirBusyError

# XLA options for --quick, set before the first computation: toy models are all compilation.
# LLVM's optimisation off (about 30% less compile time), and XLA:CPU's loop emitters instead of
# its MLIR fusion emitters, which own most of the rest (a toy train step: 16 -> 7 s; the steps
# run about 1.5x slower). The default scale keeps XLA's defaults. (tests/conftest.py and
# `benchmarks/gpu_check.sh --dry-run` set the same three.)
QUICK_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true",
                   "--xla_cpu_use_fusion_emitters=false")

USAGE = ("moejax-experiment --suite specialization|cartesian|baselines|inference|finetune|"
         "upcycle|decisive|all --workdir DIR [--seeds N] [--quick] [--set KEY=VALUE ...] "
         "[--report_only]")
FLAGS = flags.FlagValues()
flags.DEFINE_enum("suite", None, [*SUITES, "all"], "Suite to run.", flag_values=FLAGS)
flags.DEFINE_string("workdir", None, "Directory for the runs and reports.", flag_values=FLAGS)
flags.DEFINE_integer("seeds", None, "Seeds per variant (default 4; --quick: 2).",
                     flag_values=FLAGS)
flags.DEFINE_bool("quick", False, "Toy scale (a smoke test, not evidence).", flag_values=FLAGS)
flags.DEFINE_string("configs", None, "configs directory (default: the shipped configs, "
                    "moejax/configs).",
                    flag_values=FLAGS)
flags.DEFINE_multi_string("set", [], "KEY=VALUE applied to every variant after the scale and "
                          "its own overrides, e.g. --set train.steps=2000 --set mesh.expert=8.",
                          flag_values=FLAGS)
flags.DEFINE_bool("report_only", False, "Train nothing: rewrite the finished suites' Claims "
                  "sections and the summary from their finals.json (runs trained under older "
                  "code get the current statistics).", flag_values=FLAGS)
flags.mark_flags_as_required(["suite", "workdir"], flag_values=FLAGS)


def parse_overrides(items) -> dict:
    """["train.steps=2000", "mesh.expert=8", ...] -> {dotted key: Python value or string}.

    Raises:
      ValueError: an item is not KEY=VALUE.
    """
    out = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. train.steps=2000")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text
    return out


@contextlib.contextmanager
def _compile_once_per_program():
    """Toy runs compile programs that other runs of the command compile again (every seed,
    the eval step of every variant): a compilation cache that lives as long as the command,
    however small the program, makes each a cache hit (`--suite baselines --quick`: 47.7 ->
    30.9 s)."""
    options = {"jax_compilation_cache_dir": None,
               "jax_persistent_cache_min_compile_time_secs": 0.0,
               "jax_persistent_cache_min_entry_size_bytes": -1}
    before = {name: getattr(jax.config, name) for name in options}
    with tempfile.TemporaryDirectory(prefix="moejax-jit-") as cache:
        for name, value in {**options, "jax_compilation_cache_dir": cache}.items():
            jax.config.update(name, value)
        try:
            yield
        finally:
            for name, value in before.items():
                jax.config.update(name, value)


def main(options: flags.FlagValues) -> int:
    if options.quick:  # toy runs are all compilation: compile fast, once, run slower
        os.environ["XLA_FLAGS"] = " ".join(
            [os.environ.get("XLA_FLAGS", ""), *QUICK_XLA_FLAGS]).strip()
        with _compile_once_per_program():
            return _run(options)
    return _run(options)


def _run(options: flags.FlagValues) -> int:
    seeds = options.seeds or (2 if options.quick else 4)
    try:
        if seeds < 1:
            raise ValueError(f"--seeds={seeds}; allowed: >= 1")
        overrides = parse_overrides(options.set)
    except ValueError as error:
        print(f"moejax-experiment: {error}", file=sys.stderr)
        return 2
    suites = list(SUITES) if options.suite == "all" else [options.suite]
    if options.report_only:
        for report in refresh_claims(options.workdir, {name: SUITES[name] for name in suites}):
            print(f"rewrote the claims of {report}")
        print(write_summary(options.workdir, SUITES))
        return 0
    run_options = RunOptions(quick=options.quick, config_dir=options.configs,
                             overrides=overrides)
    for suite in suites:
        try:
            runs = run_suite(suite, options.workdir, seeds=seeds, options=run_options)
        except WorkdirBusyError as error:
            print(f"moejax-experiment: {error}", file=sys.stderr)
            return 3
        print(write_suite_report(suite, options.workdir, runs, run_options))
    print(write_summary(options.workdir, SUITES))
    return 0


def run():
    """Console-script entry point."""
    sys.exit(run_command("moejax-experiment", USAGE, FLAGS, main))


if __name__ == "__main__":
    run()
