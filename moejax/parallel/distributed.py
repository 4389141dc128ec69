"""Multi-host start-up: `jax.distributed.initialize` when the flags or the environment ask for it.

The three settings come from flags (`moejax-train --coordinator_address=host:port
--num_processes=N --process_id=I`) or, where a flag is not given, from the usual environment
variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID. With none of them
set, a run is single-process, unless `cluster=True` (flag `--distributed_cluster`), which lets
JAX detect a cluster (SLURM, Open MPI, Kubernetes, Cloud TPU) itself. On CPU the processes
talk through gloo collectives (jax's default `jax_cpu_collectives_implementation`).

Once initialised, `jax.devices()` lists every process's devices, the mesh spans all of them,
each process reads its own part of every batch (`data/pipeline.py`), and Orbax writes one
checkpoint from all processes together.
"""

from __future__ import annotations

import dataclasses
import os

import jax

_ENVIRONMENT = {"coordinator_address": "JAX_COORDINATOR_ADDRESS",
                "num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
    """Where the processes meet: all three set, or none (single process)."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def __post_init__(self):
        given = {name: getattr(self, name) for name in _ENVIRONMENT}
        missing = [name for name, value in given.items() if value is None]
        if missing and len(missing) < len(given):
            raise ValueError(
                f"multi-host start needs all of --coordinator_address, --num_processes and "
                f"--process_id (or {', '.join(_ENVIRONMENT.values())}); missing: "
                f"{', '.join(missing)}")
        if not missing and not 0 <= self.process_id < self.num_processes:
            raise ValueError(f"process_id={self.process_id}; allowed: 0..{self.num_processes - 1}"
                             f" for num_processes={self.num_processes}")

    @property
    def requested(self) -> bool:
        return self.coordinator_address is not None


def distributed_spec(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, environ=None) -> DistributedSpec:
    """The settings from arguments (flags), each falling back to its environment variable."""
    environ = os.environ if environ is None else environ
    values = {"coordinator_address": coordinator_address, "num_processes": num_processes,
              "process_id": process_id}
    for name, variable in _ENVIRONMENT.items():
        if values[name] is None and environ.get(variable):
            text = environ[variable]
            values[name] = text if name == "coordinator_address" else int(text)
    return DistributedSpec(**values)


def initialize_distributed(spec: DistributedSpec, *, cluster: bool = False) -> bool:
    """Calls `jax.distributed.initialize` if `spec` (or `cluster`) asks for it.

    Must run before any other JAX call touches the devices. Returns True if initialised.
    """
    if spec.requested:
        jax.distributed.initialize(spec.coordinator_address, spec.num_processes, spec.process_id)
        return True
    if cluster:
        jax.distributed.initialize()
        return True
    return False
