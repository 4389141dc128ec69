"""Engines: how token-slots reach their experts (methods.md section 4).

Every engine has the signature
`engine(x [T, D], plan: DispatchPlan, weights: ExpertWeights, *, with_activations)`
and returns `(y_slots [T, K, D], z_slots [T, K, F] or None)`, dropped slots zero.
"""

from types import MappingProxyType

from moejax.layers.engines.capacity import capacity_engine
from moejax.layers.engines.dense import dense_engine
from moejax.layers.engines.dropless import dropless_engine

ENGINES = MappingProxyType(
    {"dense": dense_engine, "capacity": capacity_engine, "dropless": dropless_engine}
)

__all__ = ["ENGINES", "capacity_engine", "dense_engine", "dropless_engine"]
