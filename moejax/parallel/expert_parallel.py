"""Expert parallelism: the routed experts under `jax.shard_map`, as an engine for the blocks.

The router and the dispatch plan run on the global batch under `jax.jit` (XLA inserts the
cross-shard reductions), so the routing record, every loss and metric, the global-batch load
balance and the bias update see global values, identical to one device's. Only the experts
run under shard_map: tokens are split over the batch axes (data, fsdp, expert), expert
weights over expert (E_l = E / n per device) and their hidden width over tensor; fsdp-sharded
weight dimensions are gathered on entry, as in any FSDP layer. Three modes
(`mesh.expert_parallel`):

- "all_to_all": padded all_to_all, fixed capacity per (source, destination) pair; needs the
  capacity engine's plan; drops are counted in the record (`ep_all_to_all.py`).
- "ring": dropless; all_gather tokens over the expert axis, local experts, psum_scatter
  outputs (`ep_ring.py`). Runs anywhere.
- "ragged": dropless ragged_all_to_all (`ep_ragged.py`); GPU/TPU only.

An `ExpertParallel` is passed to the model (`Decoder(..., engine=...)`) and called like the
engines in `moe/engines` after `prepare_plan`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from types import MappingProxyType

import jax
from jax.sharding import PartitionSpec

from moejax.moe.dispatch import DispatchPlan, SortedActivations
from moejax.moe.engines import ENGINES
from moejax.moe.experts import ExpertWeights
from moejax.options import check_choice
from moejax.parallel import axes
from moejax.parallel.ep_all_to_all import (
    all_to_all_body,
    pair_capacity,
    restrict_to_pair_capacity,
)
from moejax.parallel.ep_ragged import emulated_ragged_all_to_all, ragged_body
from moejax.parallel.ep_ring import ring_body
from moejax.parallel.mesh import EXPERT_PARALLEL_MODES

_TOKEN_AXES = axes.DEFAULT_RULES[axes.BATCH]
_EXPERT_AXIS = axes.DEFAULT_RULES[axes.EXPERT]
_TENSOR_AXIS = axes.DEFAULT_RULES[axes.EXPERT_MLP]


@dataclasses.dataclass(frozen=True)
class ExpertParallel:
    """Runs the routed experts over a mesh; an engine for `routed_experts_forward`.

    Attributes:
      mesh: the (data, fsdp, expert, tensor) mesh.
      mode: "all_to_all", "ring" or "ragged".
      pair_capacity_factor: all_to_all only: rows per (source, destination) pair as a multiple
        of the balanced load T_l*K/n (None: large enough never to drop; see ep_all_to_all.py).
      emulate_ragged: ragged only: use the padded emulation of ragged_all_to_all (for CPU
        tests of the offsets; not for training).
    """

    mesh: jax.sharding.Mesh
    mode: str
    pair_capacity_factor: float | None = None
    emulate_ragged: bool = False

    def __post_init__(self):
        check_choice("mesh.expert_parallel", self.mode, _MODE_BODIES)
        if self.pair_capacity_factor is not None and not self.pair_capacity_factor > 0:
            raise ValueError(f"mesh.pair_capacity_factor={self.pair_capacity_factor}; allowed: "
                             "None or > 0")
        platform = self.mesh.devices.flat[0].platform
        if self.mode == "ragged" and platform == "cpu" and not self.emulate_ragged:
            raise ValueError(
                "mesh.expert_parallel='ragged' needs a GPU or TPU: XLA:CPU cannot compile "
                "ragged_all_to_all (jax issue 34755). On CPU use 'all_to_all' (with "
                "moe.engine='capacity') or 'ring' (dropless)")

    @property
    def num_shards(self) -> int:
        """n, the expert axis size."""
        return self.mesh.shape[_EXPERT_AXIS]

    @property
    def num_blocks(self) -> int:
        """Token shards: the product of the batch axes."""
        return math.prod(self.mesh.shape[a] for a in _TOKEN_AXES)

    def _check(self, tokens: int, num_experts: int) -> None:
        if num_experts % self.num_shards:
            raise ValueError(f"{num_experts} routed experts are not divisible by mesh.expert="
                             f"{self.num_shards}")
        if tokens % self.num_blocks:
            raise ValueError(f"{tokens} tokens (batch x sequence) are not divisible by the "
                             f"batch axes mesh.data x mesh.fsdp x mesh.expert = {self.num_blocks}")

    def _pair_rows(self, plan: DispatchPlan) -> int:
        tokens, top_k = plan.expert_idx.shape
        return pair_capacity(tokens // self.num_blocks, top_k,
                             plan.num_experts // self.num_shards, plan.capacity,
                             self.num_shards, self.pair_capacity_factor)

    def prepare_plan(self, plan: DispatchPlan) -> DispatchPlan:
        """The plan as this mode executes it (all_to_all: pair-capacity drops marked)."""
        if self.mode != "all_to_all":
            return plan
        if plan.capacity is None:
            raise ValueError("mesh.expert_parallel='all_to_all' needs moe.engine='capacity' (a "
                             "capacity plan); the dropless modes are 'ring' and 'ragged'")
        self._check(plan.expert_idx.shape[0], plan.num_experts)
        if self.pair_capacity_factor is None:  # P is the never-overflowing bound: nothing to mark
            return plan
        return restrict_to_pair_capacity(plan, num_blocks=self.num_blocks,
                                         num_shards=self.num_shards,
                                         pair_rows=self._pair_rows(plan))

    def __call__(self, x: jax.Array, plan: DispatchPlan, weights: ExpertWeights, *,
                 activations: str | None = None):
        """The engine contract (`moe/engines/__init__.py`), for a plan from `prepare_plan`.

        Args:
          x: [T, D] tokens; plan: the global plan; weights: [E, D, F], [E, D, F], [E, F, D].
          activations: None, "slots" or "sorted"; z comes back to its tokens' shards in slot
            order, so "sorted" is `SortedActivations.from_slots` of it.

        Returns:
          (y_slots [T, K, D], z or None); dropped slots are zero.
        """
        self._check(x.shape[0], plan.num_experts)
        with_activations = activations is not None
        names = dict(expert_axis=_EXPERT_AXIS, tensor_axis=_TENSOR_AXIS,
                     with_activations=with_activations)
        body, routing = _MODE_BODIES[self.mode](self, plan)
        body = functools.partial(body, **names)
        y_slots, z_slots = _run_sharded(body, self.mesh, x, routing, weights, with_activations)
        if activations == "sorted":
            return y_slots, SortedActivations.from_slots(z_slots, plan.kept)
        return y_slots, z_slots


def _all_to_all(engine: ExpertParallel, plan: DispatchPlan):
    body = functools.partial(all_to_all_body, capacity=plan.capacity,
                             pair_rows=engine._pair_rows(plan))
    return body, (plan.expert_idx, plan.position_in_expert, plan.kept)


def _ring(engine: ExpertParallel, plan: DispatchPlan):
    return ring_body, (plan.expert_idx, plan.kept)


def _ragged(engine: ExpertParallel, plan: DispatchPlan):
    collective = emulated_ragged_all_to_all if engine.emulate_ragged else None
    return functools.partial(ragged_body, collective=collective), (plan.expert_idx, plan.kept)


# mode -> (engine, plan) -> (the shard_map body, the plan arrays it reads after x)
_MODE_BODIES = MappingProxyType({"all_to_all": _all_to_all, "ring": _ring, "ragged": _ragged})


def _run_sharded(body, mesh, x, routing: tuple, weights: ExpertWeights, with_activations):
    """shard_map of `body(x, *routing, weights)` with tokens over the batch axes."""
    tokens = PartitionSpec(_TOKEN_AXES, None)
    weight_specs = ExpertWeights(PartitionSpec(_EXPERT_AXIS, None, _TENSOR_AXIS),
                                 PartitionSpec(_EXPERT_AXIS, None, _TENSOR_AXIS),
                                 PartitionSpec(_EXPERT_AXIS, _TENSOR_AXIS, None))
    y_spec = PartitionSpec(_TOKEN_AXES, None, None)
    z_spec = PartitionSpec(_TOKEN_AXES, None, _TENSOR_AXIS)

    def run(x, routing, weights):
        y_slots, z_slots = body(x, *routing, weights)
        return (y_slots, z_slots) if with_activations else y_slots

    out = jax.shard_map(run, mesh=mesh, in_specs=(tokens, (tokens,) * len(routing), weight_specs),
                        out_specs=(y_spec, z_spec) if with_activations else y_spec)(
        x, routing, weights)
    return out if with_activations else (out, None)


def make_expert_parallel(mode: str, mesh, *, pair_capacity_factor: float | None = None,
                         moe_engine: str | None = None):
    """An ExpertParallel engine for `mesh.expert_parallel=mode`, or None for "none".

    `moe_engine` (the config's `moe.engine`) is checked against the mode when given.
    """
    check_choice("mesh.expert_parallel", mode, EXPERT_PARALLEL_MODES)
    if mode == "none":
        return None
    if mode == "all_to_all" and moe_engine is not None and not ENGINES[moe_engine].caps_capacity:
        raise ValueError(f"mesh.expert_parallel='all_to_all' needs moe.engine='capacity', not "
                         f"{moe_engine!r}; the dropless modes are 'ring' and 'ragged'")
    return ExpertParallel(mesh, mode, pair_capacity_factor)
