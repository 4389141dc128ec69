"""The device mesh from config: `mesh.data`, `mesh.fsdp`, `mesh.expert`, `mesh.tensor`.

One axis may be -1 ("the rest of the devices"). Axis types are Auto on purpose: shardings are
given explicitly to `jax.jit` (in/out shardings, `with_sharding_constraint`) and XLA propagates
the rest, and `shard_map` accepts plain arrays (see environment.md).
"""

from __future__ import annotations

import dataclasses
import math

import jax

from moejax.options import check_choice
from moejax.parallel.axes import MESH_AXES

# mesh.expert_parallel: "none" (XLA partitions the engine) or a shard_map mode of
# moejax.parallel.expert_parallel (its _MODE_BODIES has one body per mode but "none")
EXPERT_PARALLEL_MODES = ("none", "all_to_all", "ring", "ragged")


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    """Mesh axis sizes; their product must equal the device count (one may be -1).

    `devices` is how many devices the mesh uses (-1: all of them; otherwise the first N).
    `expert_parallel` picks how the routed experts run over the expert axis: "none" (XLA
    partitions the engine like any other op) or a shard_map mode of
    `moejax.parallel.expert_parallel` ("all_to_all", "ring", "ragged");
    `pair_capacity_factor` sizes the all_to_all mode's per-pair buffers (None: never drops).
    """

    data: int = -1
    fsdp: int = 1
    expert: int = 1
    tensor: int = 1
    devices: int = -1
    expert_parallel: str = "none"
    pair_capacity_factor: float | None = None

    def __post_init__(self):
        check_choice("mesh.expert_parallel", self.expert_parallel, EXPERT_PARALLEL_MODES)

    def shape(self, num_devices: int) -> tuple[int, ...]:
        """The four axis sizes for `num_devices` devices, -1 resolved."""
        sizes = [getattr(self, name) for name in MESH_AXES]
        described = ", ".join(f"mesh.{n}={s}" for n, s in zip(MESH_AXES, sizes))
        if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
            raise ValueError(f"{described}: sizes must be >= 1, with at most one -1")
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(f"{described} do not fit {num_devices} devices: "
                                 f"{num_devices} is not divisible by {known}")
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ValueError(f"{described} need {math.prod(sizes)} devices, but there are "
                             f"{num_devices}")
        return tuple(sizes)


def make_mesh(spec: MeshSpec, devices=None) -> jax.sharding.Mesh:
    """A (data, fsdp, expert, tensor) mesh over `devices` (default: `spec.devices` of all)."""
    devices = jax.devices() if devices is None else list(devices)
    if spec.devices != -1:
        if not 1 <= spec.devices <= len(devices):
            raise ValueError(f"mesh.devices={spec.devices}; allowed: -1 or 1..{len(devices)}")
        devices = devices[: spec.devices]
    shape = spec.shape(len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4,
                         devices=devices)
