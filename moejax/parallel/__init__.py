"""Parallelism: the device mesh, logical axis rules and shardings (`jax.jit` + NamedSharding)."""

from moejax.parallel.axes import DEFAULT_RULES, MESH_AXES
from moejax.parallel.expert_parallel import ExpertParallel, make_expert_parallel
from moejax.parallel.mesh import EXPERT_PARALLEL_MODES, MeshSpec, make_mesh
from moejax.parallel.sharding import (
    batch_sharding,
    logical_axes,
    shard_model_and_optimizer,
    state_shardings,
)

__all__ = [
    "DEFAULT_RULES", "EXPERT_PARALLEL_MODES", "MESH_AXES", "ExpertParallel", "MeshSpec",
    "batch_sharding", "logical_axes", "make_expert_parallel", "make_mesh",
    "shard_model_and_optimizer", "state_shardings",
]
