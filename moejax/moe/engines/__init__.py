"""Engines: how token-slots reach their experts (docs/methods.md section 4).

The engine contract, shared by `ENGINES` and the expert-parallel engines
(`moejax/parallel/expert_parallel.py`):

    engine(x [T, D], plan: DispatchPlan, weights: ExpertWeights, *, activations=None)
        -> (y_slots [T, K, D], z)

with dropped slots zero. `activations` asks for the SwiGLU activations in one layout (one of
ACTIVATION_LAYOUTS), and z is exactly that: None, "slots" gives [T, K, F], "sorted" gives a
`dispatch.SortedActivations` (rows [M, F] where the engine left them, and each slot's row),
which the pairwise-cosine kernel reads without a gather back to token order.
"""

from types import MappingProxyType

from moejax.moe.engines.capacity import capacity_engine
from moejax.moe.engines.dense import dense_engine
from moejax.moe.engines.dropless import dropless_engine

ACTIVATION_LAYOUTS = (None, "slots", "sorted")

ENGINES = MappingProxyType(
    {"dense": dense_engine, "capacity": capacity_engine, "dropless": dropless_engine}
)

__all__ = ["ACTIVATION_LAYOUTS", "ENGINES", "capacity_engine", "dense_engine", "dropless_engine"]
