"""moejax-train: `moejax-train --config NAME[:arg] --workdir DIR [--config.a.b=value]`.

`--dry-run` prints the resolved config, the parameter counts (from shapes only) and the bytes
of a parameter and of its optimizer state (`model.param_dtype`, `train.master_weights`), then
the plan: the train step lowered and compiled on the configured mesh without running it, with
per-device memory, the parameters' and optimizer state's bytes per device, FLOPs per step
and compile time (`moejax/train/plan.py`; fake CPU devices plan a multi-device run:
`JAX_NUM_CPU_DEVICES=8`), and exits.
Several hosts: start the same command on every host with `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I` (or the JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID environment variables), or `--distributed_cluster` under SLURM / MPI /
Kubernetes; see `moejax/parallel/distributed.py`.

Exit status: 0 finished; 2 a bad flag or option (one line naming it, before any work where it
can be checked up front), including a --workdir that cannot hold a run (a file, read-only, or
its `checkpoints` a symlink to nothing; named before any data is read); 3 the workdir, or the
checkpoints directory its `checkpoints` leads to, is in use by another run (named); 4 a
non-finite loss, gradient or state (the step was not saved; the line names the last good
checkpoint); 5 a checkpoint could not be written (Orbax skipped the save, or it failed: a full
disk) or a metrics row could not (the row is then missing, never cut): the run stops there,
and the line names the step and the last complete checkpoint, where a rerun resumes; 128 + N
stopped by signal N (143 for SIGTERM, 130 for Ctrl-C) after saving the step it arrived in, so
rerunning the same command resumes. `--debug` adds the traceback to those one-line errors;
without it, Orbax's own error logs of a failed save are left out (the line says what failed).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback

from absl import flags
from ml_collections import config_flags

from moejax.cli._command import run_command
from moejax.models.param_count import count_parameters
from moejax.parallel.distributed import distributed_spec, initialize_distributed
from moejax.train.checkpoint import OutputWriteError
from moejax.train.optim import state_bytes_per_parameter
from moejax.train.plan import compile_plan, format_plan
from moejax.train.specs import RunSpecs, specs_from_config, uses_master_weights
from moejax.train.trainer import NonFiniteError, StoppedBySignal, train_and_evaluate
from moejax.train.workdir_lock import WorkdirBusyError

USAGE = (
    "moejax-train --config NAME|FILE.py[:arg] --workdir DIR [--config.a.b=value] [--dry-run] "
    "[--init_from DIR]")
FLAGS = flags.FlagValues()
config_flags.DEFINE_config_file("config", None, "A shipped config NAME (default, tiny, ...) "
                                "or a config FILE.py, either with [:arg].",
                                flag_values=FLAGS)
flags.DEFINE_string("workdir", None, "Directory for metrics and checkpoints.", flag_values=FLAGS)
flags.DEFINE_bool("dry_run", False, "Print config, parameter counts and the compiled step's "
                  "plan (memory, FLOPs), then exit.", flag_values=FLAGS)
flags.DEFINE_string("coordinator_address", None,
                    "Multi-host: HOST:PORT of process 0 (or JAX_COORDINATOR_ADDRESS).",
                    flag_values=FLAGS)
flags.DEFINE_integer("num_processes", None,
                     "Multi-host: number of processes (or JAX_NUM_PROCESSES).", flag_values=FLAGS)
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index (or JAX_PROCESS_ID).",
                     flag_values=FLAGS)
flags.DEFINE_bool("distributed_cluster", False,
                  "Multi-host: let JAX detect SLURM, MPI, Kubernetes or TPU.", flag_values=FLAGS)
flags.DEFINE_bool("debug", False, "On an error, also print the traceback.", flag_values=FLAGS)
flags.DEFINE_string("init_from", None, "Start a fresh run from the weights of a moejax export "
                    "or a Hugging Face directory (sets config.train.init_from).",
                    flag_values=FLAGS)
flags.mark_flags_as_required(["config", "workdir"], flag_values=FLAGS)


def dry_run(config, specs: RunSpecs, compile_step: bool = True) -> str:
    """What --dry-run prints: the resolved config, the two count lines, the bytes per
    parameter and the plan."""
    counts = count_parameters(specs.model)
    text = (f"{config}\ntotal parameters: {counts.total}\n"
            f"active parameters per token: {counts.active}\n{_bytes_line(specs)}")
    return f"{text}\n{format_plan(compile_plan(specs))}" if compile_step else text


def _bytes_line(specs: RunSpecs) -> str:
    """Bytes of a parameter and of its optimizer state (AdamW moments, master weights)."""
    master = uses_master_weights(specs.model, specs.train)
    param, state = state_bytes_per_parameter(specs.model.param_dtype, master)
    kept = "a float32 master weight and float32 moments" if master else "AdamW's two moments"
    return (f"bytes per parameter: {param} ({specs.model.param_dtype}) + {state} of optimizer "
            f"state ({kept}) = {param + state}")


def main(options: flags.FlagValues) -> int:
    if options.init_from is not None:
        options.config.train.init_from = options.init_from
    try:  # the options are checked before any work is done
        specs = specs_from_config(options.config)
    except ValueError as error:
        print(f"moejax-train: {error}", file=sys.stderr)
        return 2
    if options.dry_run:
        print(dry_run(options.config, specs))
        return 0
    initialize_distributed(distributed_spec(options.coordinator_address, options.num_processes,
                                            options.process_id),
                           cluster=options.distributed_cluster)
    try:
        with contextlib.nullcontext() if options.debug else _without_orbax_error_logs():
            train_and_evaluate(options.config, options.workdir, specs)
    except (ValueError, FileNotFoundError, WorkdirBusyError, NonFiniteError, OutputWriteError,
            StoppedBySignal) as error:
        if options.debug:
            traceback.print_exc()
        print(f"moejax-train: {error}", file=sys.stderr)
        return _exit_status(error)
    return 0


def _exit_status(error: Exception) -> int:
    """EXIT_STATUS of a run that ended early (see the module docstring)."""
    if isinstance(error, StoppedBySignal):
        return 128 + error.signum
    return {WorkdirBusyError: 3, NonFiniteError: 4, OutputWriteError: 5}.get(type(error), 2)


def _not_an_orbax_error(record: logging.LogRecord) -> bool:
    """False for an error Orbax logs with its traceback (a failed save, which it raises too)."""
    return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


@contextlib.contextmanager
def _without_orbax_error_logs():
    """Leaves out Orbax's error logs: a failed save reaches the user as one line (exit 5)."""
    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(_not_an_orbax_error)
    try:
        yield
    finally:
        absl_logger.removeFilter(_not_an_orbax_error)


def run():
    """Console-script entry point; accepts `--dry-run` as well as absl's `--dry_run`."""
    argv = ["--dry_run" if arg == "--dry-run" else arg for arg in sys.argv]
    sys.exit(run_command("moejax-train", USAGE, FLAGS, main, argv))


if __name__ == "__main__":
    run()
