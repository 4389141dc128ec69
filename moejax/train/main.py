"""moejax-train: `moejax-train --config configs/NAME.py[:arg] --workdir DIR [--config.a.b=value]`.

`--dry-run` prints the resolved config and the parameter counts (from shapes only) and exits.
Several hosts: start the same command on every host with `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I` (or the JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID environment variables), or `--distributed_cluster` under SLURM / MPI /
Kubernetes; see `moejax/parallel/distributed.py`.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics and checkpoints.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print config and parameter counts, then exit.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: HOST:PORT of process 0 (or JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-host: number of processes (or JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Multi-host: this process's index (or JAX_PROCESS_ID).")
_CLUSTER = flags.DEFINE_bool(
    "distributed_cluster", False, "Multi-host: let JAX detect SLURM, MPI, Kubernetes or TPU.")
flags.mark_flags_as_required(["config", "workdir"])


def dry_run(config) -> str:
    """The resolved config and the two count lines, as printed by --dry-run."""
    from moejax.layers.param_count import count_parameters
    from moejax.train.specs import specs_from_config

    spec, _ = specs_from_config(config)
    counts = count_parameters(spec)
    return (f"{config}\ntotal parameters: {counts.total}\n"
            f"active parameters per token: {counts.active}")


def _main(argv):
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _DRY_RUN.value:
        print(dry_run(_CONFIG.value))
        return
    from moejax.parallel.distributed import distributed_spec, initialize_distributed

    initialize_distributed(distributed_spec(_COORDINATOR.value, _NUM_PROCESSES.value,
                                            _PROCESS_ID.value), cluster=_CLUSTER.value)
    from moejax.train.trainer import train_and_evaluate

    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def run():
    """Console-script entry point; accepts `--dry-run` as well as absl's `--dry_run`."""
    argv = ["--dry_run" if arg == "--dry-run" else arg for arg in sys.argv]
    app.run(_main, argv=argv)


if __name__ == "__main__":
    run()
