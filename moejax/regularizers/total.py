"""The weighted sum of the regularizers over a model's routing record.

`L_aux = lb * L_lb + z * L_z + sp * R_sp + cp * R_cp + orth * L_orth + var * L_var`
(docs/methods.md section 5), a loop over the `LOSSES` table; terms with weight 0 are skipped.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import NamedTuple

import jax
import jax.numpy as jnp

from moejax.options import check_choice
from moejax.record import RoutingRecord
from moejax.regularizers.baselines import score_variance_loss
from moejax.regularizers.coupling import FORMS, coupling_loss
from moejax.regularizers.load_balance import load_balance_loss
from moejax.regularizers.specialization import MODES, specialization_loss_from_cosine
from moejax.regularizers.z_loss import z_loss

LB_VARIANTS = ("batch", "sequence", "global")


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """Regularizer weights and options (`config.loss`).

    Attributes:
      lb: load-balance weight (typical 1e-2).
      lb_variant: "batch" (the micro-batch: under jit the whole global batch of one
        forward pass, every data shard included), "sequence" (per sequence) or "global"
        (the whole optimizer step: loads also summed over the gradient-accumulation
        micro-batches, and over `axis_name` inside shard_map).
      z: router z-loss weight (typical 1e-3).
      sp: intra-layer specialization weight (paper A: 2e-3); needs top_k >= 2.
      sp_mode: "square" or "abs".
      sp_max_tokens: evaluate sp on a fixed, evenly spaced subset of this many tokens.
      cp: cross-layer coupling weight (paper A: 1e-3); needs >= 2 routers.
      cp_form: "product" or "log".
      cp_stop_gradient_deeper: no gradient through the deeper router of each pair.
      orth: orthogonality baseline weight (cosine of co-activated expert outputs).
      var: router-score variance baseline weight.
      bias_rate: aux-loss-free bias update rate (0 = off; needs router.use_bias).
    """

    lb: float = 0.0
    lb_variant: str = "batch"
    z: float = 0.0
    sp: float = 0.0
    sp_mode: str = "square"
    sp_max_tokens: int | None = None
    cp: float = 0.0
    cp_form: str = "product"
    cp_stop_gradient_deeper: bool = False
    orth: float = 0.0
    var: float = 0.0
    bias_rate: float = 0.0

    def __post_init__(self):
        check_choice("loss.lb_variant", self.lb_variant, LB_VARIANTS)
        check_choice("loss.sp_mode", self.sp_mode, MODES)
        check_choice("loss.cp_form", self.cp_form, FORMS)
        if self.sp > 0 and self.orth > 0:
            raise ValueError("loss.sp and loss.orth both read the record's pair_cos (of "
                             "activations and of outputs): use one at a time")
        weights = (*LOSSES, "bias_rate")  # every term's weight field, and the bias update's
        negative = [f"loss.{k}={getattr(self, k)}" for k in weights if getattr(self, k) < 0]
        if negative:
            raise ValueError(f"loss weights must be >= 0: {', '.join(negative)}")

    @property
    def needs_cosine(self) -> str | None:
        """Which cosine the blocks must record: "activation", "output" or None."""
        return "activation" if self.sp > 0 else "output" if self.orth > 0 else None


class BatchLayout(NamedTuple):
    """What the losses need to know about the batch besides the record.

    Attributes:
      sequence_length: S, for lb_variant="sequence" (tokens are [B*S] token-major).
      axis_name: data-parallel mesh axis name(s), for lb_variant="global" inside shard_map.
      extra_tokens_per_expert: [R, E] slots routed in the other gradient-accumulation
        micro-batches of this optimizer step, for lb_variant="global".
    """

    sequence_length: int | None = None
    axis_name: str | tuple | None = None
    extra_tokens_per_expert: jax.Array | None = None


def _lb_term(record: RoutingRecord, spec: LossSpec, batch: BatchLayout):
    if spec.lb_variant == "sequence":
        if batch.sequence_length is None:
            raise ValueError('loss.lb_variant="sequence" needs aux_total(..., sequence_length=S)')
        return load_balance_loss(record.probs, record.expert_idx, num_experts=record.num_experts,
                                 sequence_length=batch.sequence_length)
    is_global = spec.lb_variant == "global"
    return load_balance_loss(
        record.probs, record.expert_idx, num_experts=record.num_experts,
        axis_name=batch.axis_name if is_global else None,
        extra_tokens_per_expert=batch.extra_tokens_per_expert if is_global else None)


def _pair_cos(record: RoutingRecord, name: str) -> jax.Array:
    if record.pair_cos is None:
        raise ValueError(f"loss.{name} > 0 but the record has no pair_cos: build the blocks "
                         "with record_cosine=True")
    return record.pair_cos


def _sp_term(record: RoutingRecord, spec: LossSpec, batch: BatchLayout):
    return specialization_loss_from_cosine(_pair_cos(record, "sp"), top_k=record.top_k,
                                           mode=spec.sp_mode, max_tokens=spec.sp_max_tokens)


def _orth_term(record: RoutingRecord, spec: LossSpec, batch: BatchLayout):
    # the same squared cosine, of the experts' outputs (the blocks record those for orth)
    return specialization_loss_from_cosine(_pair_cos(record, "orth"), top_k=record.top_k,
                                           mode="square", max_tokens=spec.sp_max_tokens)


def _cp_term(record: RoutingRecord, spec: LossSpec, batch: BatchLayout):
    return coupling_loss(record.probs, record.expert_idx, form=spec.cp_form,
                         stop_gradient_deeper=spec.cp_stop_gradient_deeper)


# name -> term(record, spec, batch) -> (mean, per-router values); each name is also the
# LossSpec field of its weight. A new loss: its module, one entry here and one weight field.
LOSSES = MappingProxyType({
    "lb": _lb_term,
    "z": lambda record, spec, batch: z_loss(record.logits),
    "sp": _sp_term,
    "cp": _cp_term,
    "orth": _orth_term,
    "var": lambda record, spec, batch: score_variance_loss(record.probs,
                                                           num_experts=record.num_experts),
})


def aux_total(record: RoutingRecord, spec: LossSpec, *, sequence_length=None, axis_name=None,
              extra_tokens_per_expert=None):
    """Weighted regularizers of a model's record: every LOSSES term with a weight > 0.

    Args:
      record: the decoder's routing record (R routers in depth order, T tokens).
      spec: weights and options.
      sequence_length, axis_name, extra_tokens_per_expert: see `BatchLayout`.

    Returns:
      (total [] float32, terms): terms maps "aux/<name>" to the unweighted mean and
      "aux/<name>/per_router" to the per-router (per-pair for cp) values.
    """
    batch = BatchLayout(sequence_length, axis_name, extra_tokens_per_expert)
    total = jnp.zeros((), jnp.float32)
    logged = {}
    for name, term in LOSSES.items():
        weight = getattr(spec, name)
        if weight > 0:
            mean, per_router = term(record, spec, batch)
            total = total + weight * mean
            logged[f"aux/{name}"] = mean
            logged[f"aux/{name}/per_router"] = per_router
    return total, logged
