"""Routing records: what every router did, as a pytree the regularizers read.

A block returns one `RoutingRecord` whose arrays carry a leading router axis R (1 for a
top-k or DeepSeekMoE block, 2 for a CartesianMoE layer). The decoder concatenates the
records of all its MoE layers in depth order with `concat_records`, padding routers with
fewer experts (E) or fewer choices (K) so that the result is one rectangular pytree:

- padded experts have probability 0, logit -inf and count 0;
- padded choices have `expert_idx == -1`, gate 0 and `kept == False`.

`num_experts[r]` and `top_k[r]` give each router's true sizes, so losses never count padding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RoutingRecord:
    """What a stack of R routers did on the same T tokens.

    Attributes:
      logits: [R, T, E] float32 router logits `x W_r` (before any bias or jitter-free softmax).
      probs: [R, T, E] float32 pre-top-k distribution (docs/methods.md section 2):
        `softmax(logits)`, or for a sigmoid router the normalised sigmoid
        `sigmoid(logits) / sum sigmoid(logits)`.
      expert_idx: [R, T, K] int32 chosen experts, best first; -1 marks a padded choice.
      gates: [R, T, K] float32 combine weights of the chosen experts (0 where dropped or padded).
      kept: [R, T, K] bool, False where a token-slot was dropped by capacity or is padding.
      tokens_per_expert: [R, E] int32 token-slots routed to each expert (before drops).
      dropped: [R] int32 token-slots dropped by capacity.
      num_experts: [R] int32 true expert count of each router.
      top_k: [R] int32 true number of choices per token of each router.
      pair_cos: [R, T', K, K] float32 cosine of the chosen experts' SwiGLU activations z,
        or None when the block was not asked for it; T' = T, or the `token_subset` of
        `MoESpec.cosine_max_tokens` tokens. A dropped slot has cosine 0, with itself too.
    """

    logits: jax.Array
    probs: jax.Array
    expert_idx: jax.Array
    gates: jax.Array
    kept: jax.Array
    tokens_per_expert: jax.Array
    dropped: jax.Array
    num_experts: jax.Array
    top_k: jax.Array
    pair_cos: jax.Array | None = None

    @property
    def num_routers(self) -> int:
        return self.logits.shape[0]


def _pad_axis(x: jax.Array, axis: int, size: int, value) -> jax.Array:
    missing = size - x.shape[axis]
    if missing == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, missing)
    return jnp.pad(x, widths, constant_values=value)


def pad_record(record: RoutingRecord, num_experts: int, top_k: int) -> RoutingRecord:
    """Pads a record to E = num_experts experts and K = top_k choices (see module docstring)."""
    pair_cos = record.pair_cos
    if pair_cos is not None:
        pair_cos = _pad_axis(_pad_axis(pair_cos, 2, top_k, 0.0), 3, top_k, 0.0)
    return RoutingRecord(
        logits=_pad_axis(record.logits, 2, num_experts, -jnp.inf),
        probs=_pad_axis(record.probs, 2, num_experts, 0.0),
        expert_idx=_pad_axis(record.expert_idx, 2, top_k, -1),
        gates=_pad_axis(record.gates, 2, top_k, 0.0),
        kept=_pad_axis(record.kept, 2, top_k, False),
        tokens_per_expert=_pad_axis(record.tokens_per_expert, 1, num_experts, 0),
        dropped=record.dropped,
        num_experts=record.num_experts,
        top_k=record.top_k,
        pair_cos=pair_cos,
    )


def concat_records(records: Sequence[RoutingRecord]) -> RoutingRecord:
    """Concatenates records along the router axis, in the order given (depth order).

    Args:
      records: records with equal T; E and K may differ (they are padded to the largest).

    Returns:
      One record with R = sum of the inputs' R.
    """
    if not records:
        raise ValueError("concat_records needs at least one record (the model has no MoE layer)")
    with_cos = {r.pair_cos is not None for r in records}
    if len(with_cos) > 1:
        raise ValueError("either every block records pair_cos or none does")
    num_experts = max(r.logits.shape[2] for r in records)
    top_k = max(r.expert_idx.shape[2] for r in records)
    padded = [pad_record(r, num_experts, top_k) for r in records]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *padded)


def concat_tokens(records: Sequence[RoutingRecord]) -> RoutingRecord:
    """Joins records of the same routers over different tokens (e.g. micro-batches).

    Args:
      records: records with equal R, E and K.

    Returns:
      One record over all their tokens, in the order given: per-token fields concatenated
      along T, `tokens_per_expert` and `dropped` summed.
    """
    first = records[0]
    summed = dict(tokens_per_expert=sum(r.tokens_per_expert for r in records),
                  dropped=sum(r.dropped for r in records))
    per_token = {field.name: jnp.concatenate([getattr(r, field.name) for r in records], axis=1)
                 for field in dataclasses.fields(RoutingRecord)
                 if field.name not in (*summed, "num_experts", "top_k")
                 and getattr(first, field.name) is not None}
    return dataclasses.replace(first, **summed, **per_token)


def token_subset(num_tokens: int, max_tokens: int | None) -> jax.Array | None:
    """A fixed, evenly spaced subset of at most `max_tokens` of T token indices (or None).

    The tokens whose cosines a block records (`MoESpec.cosine_max_tokens`) and the
    specialization loss reads (`loss.sp_max_tokens`).
    """
    if max_tokens is None or max_tokens >= num_tokens:
        return None
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} must be >= 1")
    return jnp.asarray((jnp.arange(max_tokens) * num_tokens) // max_tokens, jnp.int32)
