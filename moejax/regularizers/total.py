"""The weighted sum of the regularizers over a model's routing record.

`L_aux = lb * L_lb + z * L_z + sp * R_sp + cp * R_cp + orth * L_orth + var * L_var`
(methods.md section 5). Terms with weight 0 are skipped.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

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
      lb_variant: "batch" (micro-batch), "sequence" (per sequence) or "global" (global batch:
        loads summed over the data-parallel axes).
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
        if self.lb_variant not in LB_VARIANTS:
            raise ValueError(f"loss.lb_variant={self.lb_variant!r}; allowed: "
                             f"{', '.join(LB_VARIANTS)}")
        if self.sp_mode not in MODES:
            raise ValueError(f"loss.sp_mode={self.sp_mode!r}; allowed: {', '.join(MODES)}")
        if self.cp_form not in FORMS:
            raise ValueError(f"loss.cp_form={self.cp_form!r}; allowed: {', '.join(FORMS)}")
        if self.sp > 0 and self.orth > 0:
            raise ValueError("loss.sp and loss.orth both read the record's pair_cos (of "
                             "activations and of outputs): use one at a time")
        weights = dict(lb=self.lb, z=self.z, sp=self.sp, cp=self.cp, orth=self.orth,
                       var=self.var, bias_rate=self.bias_rate)
        negative = [f"loss.{k}={v}" for k, v in weights.items() if v < 0]
        if negative:
            raise ValueError(f"loss weights must be >= 0: {', '.join(negative)}")

    @property
    def needs_cosine(self) -> str | None:
        """Which cosine the blocks must record: "activation", "output" or None."""
        return "activation" if self.sp > 0 else "output" if self.orth > 0 else None


def _terms(record: RoutingRecord, spec: LossSpec, sequence_length, axis_name):
    """name -> (mean, per-router values) for every term with a non-zero weight."""
    terms = {}
    if spec.lb > 0 and spec.lb_variant == "sequence" and sequence_length is None:
        raise ValueError('loss.lb_variant="sequence" needs aux_total(..., sequence_length=S)')
    if spec.lb > 0:
        terms["lb"] = load_balance_loss(
            record.probs, record.expert_idx, num_experts=record.num_experts,
            sequence_length=sequence_length if spec.lb_variant == "sequence" else None,
            axis_name=axis_name if spec.lb_variant == "global" else None)
    if spec.z > 0:
        terms["z"] = z_loss(record.logits)
    for name in ("sp", "orth"):
        if getattr(spec, name) > 0:
            if record.pair_cos is None:
                raise ValueError(f"loss.{name} > 0 but the record has no pair_cos: build the "
                                 "blocks with record_cosine=True")
            terms[name] = specialization_loss_from_cosine(
                record.pair_cos, top_k=record.top_k,
                mode=spec.sp_mode if name == "sp" else "square", max_tokens=spec.sp_max_tokens)
    if spec.cp > 0:
        terms["cp"] = coupling_loss(record.probs, record.expert_idx, form=spec.cp_form,
                                    stop_gradient_deeper=spec.cp_stop_gradient_deeper)
    if spec.var > 0:
        terms["var"] = score_variance_loss(record.probs, num_experts=record.num_experts)
    return terms


def aux_total(record: RoutingRecord, spec: LossSpec, *, sequence_length=None, axis_name=None):
    """Weighted regularizers of a model's record.

    Args:
      record: the decoder's routing record (R routers in depth order, T tokens).
      spec: weights and options.
      sequence_length: S, for lb_variant="sequence" (tokens are [B*S] token-major).
      axis_name: data-parallel mesh axis name(s), for lb_variant="global" inside shard_map.

    Returns:
      (total [] float32, terms): terms maps "aux/<name>" to the unweighted mean and
      "aux/<name>/per_router" to the per-router (per-pair for cp) values.
    """
    total = jnp.zeros((), jnp.float32)
    logged = {}
    for name, (mean, per_router) in _terms(record, spec, sequence_length, axis_name).items():
        total = total + getattr(spec, name) * mean
        logged[f"aux/{name}"] = mean
        logged[f"aux/{name}/per_router"] = per_router
    return total, logged
