"""Engines: how token-slots reach their experts (docs/methods.md section 4).

The engine contract, shared by `ENGINES` and the expert-parallel engines
(`moejax/parallel/expert_parallel.py`):

    engine(x [T, D], plan: DispatchPlan, weights: ExpertWeights, *, activations=None)
        -> (y_slots [T, K, D], z)

with dropped slots zero. `activations` asks for the SwiGLU activations in one layout (one of
ACTIVATION_LAYOUTS), and z is exactly that: None, "slots" gives [T, K, F], "sorted" gives a
`dispatch.SortedActivations` (rows [M, F] where the engine left them, and each slot's row),
which the pairwise-cosine kernel reads without a gather back to token order.

`ENGINES` maps `moe.engine` to an `EngineKind` (`kind.py`): the engine function (`run`),
whether its plan is capped at a capacity, and the MoESpec options it takes; the blocks read
only the table. A new engine is one file here plus one row.
"""

from types import MappingProxyType

from moejax.moe.engines.capacity import capacity_engine
from moejax.moe.engines.dense import dense_engine
from moejax.moe.engines.dropless import dropless_engine
from moejax.moe.engines.kind import EngineKind

ACTIVATION_LAYOUTS = (None, "slots", "sorted")

ENGINES = MappingProxyType({
    "dense": EngineKind(dense_engine),
    "capacity": EngineKind(capacity_engine, caps_capacity=True),
    "dropless": EngineKind(dropless_engine, spec_options=("grouped_matmul",)),
})

__all__ = ["ACTIVATION_LAYOUTS", "ENGINES", "EngineKind", "capacity_engine", "dense_engine",
           "dropless_engine"]
