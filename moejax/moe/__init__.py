"""The MoE data path: router -> dispatch plan -> engine (experts) -> combine -> record.

Blocks: `TopKMoE` (Mixtral layout), `DeepSeekMoE` (fine-grained + shared experts) and
`CartesianMoE` (two routed sub-layers), each `x [T, D] -> (y [T, D], RoutingRecord)`.
"""

from moejax.moe.cartesian import CartesianMoE
from moejax.moe.combine import combine, mix_shared
from moejax.moe.deepseek import DeepSeekMoE
from moejax.moe.dispatch import DispatchPlan, SortedActivations, capacity_for, make_plan
from moejax.moe.engines import ENGINES
from moejax.moe.experts import (
    Experts,
    ExpertWeights,
    experts_on_buffers,
    experts_on_sorted_rows,
)
from moejax.moe.router import ROUTER_KINDS, Router, RouterSpec, Routing, route
from moejax.moe.shared import SharedExperts
from moejax.moe.spec import MoESpec
from moejax.moe.topk import TopKMoE

__all__ = [
    "ENGINES", "ROUTER_KINDS", "CartesianMoE", "DeepSeekMoE", "DispatchPlan", "ExpertWeights",
    "Experts", "MoESpec", "Router", "RouterSpec", "Routing", "SharedExperts",
    "SortedActivations", "TopKMoE", "capacity_for", "combine", "experts_on_buffers",
    "experts_on_sorted_rows", "make_plan", "mix_shared", "route",
]
