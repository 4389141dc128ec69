"""Combine: per-slot expert outputs back to one vector per token, and shared-expert mixing."""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import NamedTuple

import jax
import jax.numpy as jnp

from moejax.options import check_choice


def combine(y_slots: jax.Array, gates: jax.Array, kept: jax.Array) -> jax.Array:
    """y_t = sum_j g_tj * kept_tj * y_slots_tj.

    Args:
      y_slots: [T, K, D] expert outputs in the compute dtype.
      gates: [T, K] float32 gates.
      kept: [T, K] bool, False for dropped slots.

    Returns:
      [T, D] in y_slots's dtype.
    """
    weights = jnp.where(kept, gates, jnp.zeros_like(gates)).astype(y_slots.dtype)
    return jnp.einsum("TKD,TK->TD", y_slots, weights)


class SharedMix(NamedTuple):
    """How a `MoESpec.shared_mix` option joins the shared experts to the routed output.

    Attributes:
      width: logits per token of its learned gate `u W_c (+ b_c)`, W_c: [D, width]
        (0: no gate, no parameters).
      bias: whether that gate has a bias b_c [width].
      join: (routed [T, D], shared [T, D], gate logits [T, width] float32 or wider, or None)
        -> [T, D] in routed's dtype; the gate math runs in the logits' dtype.
    """

    width: int
    bias: bool
    join: Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]


def _sum(routed, shared, mix_logits):
    del mix_logits
    return routed + shared


def _softmax_mix(routed, shared, mix_logits):
    mix = jax.nn.softmax(mix_logits, axis=-1).astype(routed.dtype)
    return mix[:, :1] * routed + mix[:, 1:] * shared


def _sigmoid_gate(routed, shared, mix_logits):
    return routed + jax.nn.sigmoid(mix_logits).astype(routed.dtype) * shared


SHARED_MIXES = MappingProxyType({
    "sum": SharedMix(0, False, _sum),  # DeepSeekMoE: routed + shared
    "softmax": SharedMix(2, True, _softmax_mix),  # CartesianMoE: c0 routed + c1 shared
    "sigmoid": SharedMix(1, False, _sigmoid_gate),  # Qwen2-MoE: routed + sigmoid(u w) shared
})


def mix_shared(routed: jax.Array, shared: jax.Array, mix_logits: jax.Array | None = None,
               mix: str | None = None) -> jax.Array:
    """Joins the shared experts' output to the routed one (`SHARED_MIXES`).

    Args:
      routed: [T, D] routed-expert output.
      shared: [T, D] shared-expert output.
      mix_logits: [T, width] float32 (or wider) logits of the learned gate, or None.
      mix: a key of SHARED_MIXES; None: "sum" without mix_logits, else "softmax" (the
        2-way mix c = softmax(mix_logits), CartesianMoE).

    Returns:
      [T, D]: routed + shared ("sum"), c0 * routed + c1 * shared ("softmax"), or
      routed + sigmoid(mix_logits) * shared ("sigmoid", mix_logits [T, 1]).
    """
    mix = mix or ("sum" if mix_logits is None else "softmax")
    check_choice("mix", mix, SHARED_MIXES)
    width = 0 if mix_logits is None else mix_logits.shape[-1]
    if width != SHARED_MIXES[mix].width:
        raise ValueError(f"mix_shared: mix={mix!r} needs mix_logits of width "
                         f"{SHARED_MIXES[mix].width} (0: None), got {width}")
    return SHARED_MIXES[mix].join(routed, shared, mix_logits)
