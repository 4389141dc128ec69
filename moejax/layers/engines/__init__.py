"""Engines: how token-slots reach their experts (methods.md section 4).

Every engine has the signature
`engine(x [T, D], plan: DispatchPlan, weights: ExpertWeights, *, with_activations,
sorted_activations)` and returns `(y_slots [T, K, D], z)`, dropped slots zero, where z is None,
[T, K, F], or (with `sorted_activations`, where the engine has that layout) a
`dispatch.SortedActivations` that the pairwise-cosine kernel reads without a gather.
"""

from types import MappingProxyType

from moejax.layers.engines.capacity import capacity_engine
from moejax.layers.engines.dense import dense_engine
from moejax.layers.engines.dropless import dropless_engine

ENGINES = MappingProxyType(
    {"dense": dense_engine, "capacity": capacity_engine, "dropless": dropless_engine}
)

__all__ = ["ENGINES", "capacity_engine", "dense_engine", "dropless_engine"]
