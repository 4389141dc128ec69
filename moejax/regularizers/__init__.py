"""Regularizers: pure, jittable functions over routing records (docs/methods.md section 5).

Each loss takes plain arrays with an optional leading router axis R and returns
`(mean over routers, per-router values)`. `regularizers/` imports only `moejax.record`.
"""

from moejax.regularizers.baselines import orthogonality_loss, score_variance_loss
from moejax.regularizers.bias_update import updated_bias
from moejax.regularizers.coupling import coupling_loss, topk_mass
from moejax.regularizers.diagnostics import nmi_from_counts, routing_metrics
from moejax.regularizers.load_balance import load_balance_loss
from moejax.regularizers.specialization import (
    specialization_loss,
    specialization_loss_from_cosine,
)
from moejax.regularizers.total import LOSSES, BatchLayout, LossSpec, aux_total
from moejax.regularizers.z_loss import z_loss

__all__ = [
    "BatchLayout", "LOSSES", "LossSpec", "aux_total", "coupling_loss", "load_balance_loss",
    "nmi_from_counts", "orthogonality_loss", "routing_metrics", "score_variance_loss",
    "specialization_loss", "specialization_loss_from_cosine", "topk_mass", "updated_bias", "z_loss",
]
