"""EngineKind: one row of the `ENGINES` table, an engine and what it reads from the MoESpec.

Not a data-path stage: the glue between the dispatch-plan stage (`moe/dispatch.py`) and the
engine stage. A block asks the row of `moe.engine` for its plan (capped at a capacity or not,
docs/methods.md section 4) and for the engine with its MoESpec options bound; it names no
engine itself, so adding an engine is one file in `moe/engines/` plus one row in `ENGINES`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax

from moejax.moe.dispatch import DispatchPlan, capacity_for, make_plan


@dataclasses.dataclass(frozen=True)
class EngineKind:
    """An engine and its options.

    Attributes:
      run: the engine, `run(x [T, D], plan, weights, *, activations=None, **options)
        -> (y_slots [T, K, D], z)` (the contract of `engines/__init__.py`).
      caps_capacity: its plan holds C = capacity_for(T, K, E, moe.capacity_factor) slots per
        expert, the overflow dropped and counted; False: a plan without capacity (no drops).
      spec_options: MoESpec fields that `run` takes as keyword options of the same name
        (e.g. "grouped_matmul").
    """

    run: Callable
    caps_capacity: bool = False
    spec_options: tuple[str, ...] = ()

    def plan(self, expert_idx: jax.Array, num_experts: int, capacity_factor: float,
             dispatch=None) -> DispatchPlan:
        """The dispatch plan this engine runs on (`dispatch.make_plan`).

        Args:
          expert_idx: [T, K] int chosen experts.
          num_experts: E.
          capacity_factor: the layer's `moe.capacity_factor` (read when `caps_capacity`).
          dispatch: the router's `kernels.TopKDispatch` of these choices, or None.

        Returns:
          DispatchPlan, with capacity C or None.
        """
        tokens, top_k = expert_idx.shape
        capacity = None
        if self.caps_capacity:
            capacity = capacity_for(tokens, top_k, num_experts, capacity_factor)
        return make_plan(expert_idx, num_experts, capacity, dispatch)

    def bind(self, spec) -> Callable:
        """`run` with its `spec_options` read from `spec` (the layer's MoESpec, which imports
        this table, hence no annotation): an engine of the plain contract."""
        options = {name: getattr(spec, name) for name in self.spec_options}
        return functools.partial(self.run, **options) if options else self.run
