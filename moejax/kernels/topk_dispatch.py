"""Fused softmax-top-k routing and expert-sorted positions: router and dispatch plan in one pass.

Covers the "softmax_topk" router of docs/methods.md section 2 (s = softmax(r), top-k of s, gates the
picked s, optionally renormalised to sum 1) plus what the dispatch plan needs (section 4): the
slot counts per expert and where each token-slot lands in expert-sorted order, without an
argsort. A token-slot is (token t, choice j), numbered t*K + j; slots are sorted by expert, then
by slot number, so `position_in_expert` and `expert_sorted_index` equal what a stable argsort
of the flattened expert ids gives (`moe/dispatch.py`).

Two implementations, one signature:
- "jnp": `jax.lax.top_k` on the softmax, then an exclusive cumsum of the one-hot choices over
  tokens (memory [T, E] int32); autodiff gives the gate gradient.
- "pallas": one kernel over blocks of `block_tokens` tokens computes the softmax, k passes of
  argmax (ties: lowest index, as `jax.lax.top_k`), the gates, per-block expert counts and each
  slot's rank inside its block (an exclusive prefix sum over the block's tokens, done as a
  strictly-lower-triangular matmul); a jnp cumsum over the [blocks, E] counts then adds the
  cross-block offsets. A `jax.custom_vjp` supplies the gate (and probs) gradient in jnp.
See `_common.py` for the platforms the kernel has been checked on.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from moejax.kernels import _common

_GATE_EPS = 1e-20  # as the router's renormalisation: picked / (sum(picked) + 1e-20)
_MIN_WIDTH = 16  # Triton's dot needs every dimension >= 16


class TopKDispatch(NamedTuple):
    """Routing of T tokens to k of E experts, with expert-sorted positions.

    Attributes:
      gates: [T, K] float32 (float64 for float64 logits) picked softmax probabilities, best
        first, renormalised to sum 1 when `normalize`.
      expert_idx: [T, K] int32 chosen experts, best first; ties go to the lowest index.
      tokens_per_expert: [E] int32 slots routed to each expert.
      position_in_expert: [T, K] int32 rank of slot (t, j) among its expert's slots, in slot
        order t*K + j.
      expert_sorted_index: [T, K] int32 where slot (t, j) lands in expert-sorted order:
        group_start[expert] + position_in_expert, a permutation of 0 .. T*K - 1.
      probs: [T, E] softmax of the logits in the gates' dtype when `return_probs`, else None.
    """

    gates: jax.Array
    expert_idx: jax.Array
    tokens_per_expert: jax.Array
    position_in_expert: jax.Array
    expert_sorted_index: jax.Array
    probs: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static options of the Pallas path (hashable: a custom_vjp non-differentiable argument)."""

    top_k: int
    normalize: bool
    return_probs: bool
    block_tokens: int
    interpret: object  # pallas_call's: a bool or pltpu.InterpretParams


def topk_dispatch(
    logits: jax.Array,
    k: int,
    *,
    normalize: bool = True,
    return_probs: bool = False,
    implementation: str = "auto",
    interpret: bool | None = None,
    block_tokens: int = 64,
) -> TopKDispatch:
    """Softmax over experts, top-k, gates, counts and expert-sorted positions.

    Args:
      logits: [T, E] router logits, any float dtype (the math runs in float32, or float64
        for float64 logits); a row with a NaN gets unspecified choices.
      k: experts chosen per token, 1 <= k <= E.
      normalize: renormalise the k gates to sum 1 (Mixtral's `norm_topk_prob`).
      return_probs: also return the [T, E] softmax (what the load-balance loss reads).
      implementation: "auto" (jnp until the kernels have run on this platform:
        `_common._AUTO_PALLAS_BACKENDS`), "pallas" or "jnp".
      interpret: run the Pallas kernel in interpret mode (True, or `pltpu.InterpretParams()`
        for TPU's); None: on CPU only.
      block_tokens: tokens per Pallas block, a power of two >= 16.

    Returns:
      TopKDispatch; gradients flow from `gates` (and `probs`) into the logits.

    Raises:
      ValueError: logits not [T, E] float, k outside [1, E], a bad implementation or block.
    """
    _check(logits, k, block_tokens)
    if not _common.use_pallas(implementation):
        return _topk_dispatch_jnp(logits, k, normalize, return_probs)
    config = _Config(k, bool(normalize), bool(return_probs), block_tokens,
                     _common.resolve_interpret(interpret))
    return _topk_dispatch_pallas(logits, config)


def _check(logits: jax.Array, k: int, block_tokens: int) -> None:
    """Raises ValueError for a bad rank, dtype, k or block size."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be [T, E]; got shape {logits.shape}")
    _common.check_float("logits", logits)
    num_experts = logits.shape[1]
    if not isinstance(k, int | np.integer) or not 1 <= k <= num_experts:
        raise ValueError(f"k={k!r} must be an integer in [1, num_experts={num_experts}]")
    _common.check_block("block_tokens", block_tokens)


# ----------------------------------------------------------------------------- jnp reference


def _topk_dispatch_jnp(logits: jax.Array, k: int, normalize: bool,
                       return_probs: bool) -> TopKDispatch:
    """Same contract as `topk_dispatch`, with jax.lax.top_k and a cumsum of one-hot choices."""
    num_tokens, num_experts = logits.shape
    probs = jax.nn.softmax(logits.astype(_common.compute_dtype(logits.dtype)), axis=-1)
    picked, expert_idx = jax.lax.top_k(probs, k)
    expert_idx = expert_idx.astype(jnp.int32)
    gates = _normalize(picked) if normalize else picked
    one_hot = jax.nn.one_hot(expert_idx, num_experts, dtype=jnp.int32)  # [T, K, E]
    chosen = one_hot.sum(1, dtype=jnp.int32)  # [T, E] 0/1
    before = _common.exclusive_cumsum(chosen)  # earlier tokens' slots
    position = jnp.take_along_axis(before, expert_idx, axis=1)
    return _dispatch(gates, expert_idx, chosen.sum(0, dtype=jnp.int32), position,
                     probs if return_probs else None)


def _dispatch(gates, expert_idx, tokens_per_expert, position, probs) -> TopKDispatch:
    """TopKDispatch, with each slot's expert-sorted index from its position and the counts."""
    group_start = _common.exclusive_cumsum(tokens_per_expert)
    return TopKDispatch(gates=gates, expert_idx=expert_idx, tokens_per_expert=tokens_per_expert,
                        position_in_expert=position,
                        expert_sorted_index=position + group_start[expert_idx], probs=probs)


def _normalize(picked: jax.Array) -> jax.Array:
    """[T, K] -> [T, K] divided by its row sum (plus _GATE_EPS), as the router does."""
    return picked / (picked.sum(-1, keepdims=True) + _GATE_EPS)


# ----------------------------------------------------------------------------- Pallas kernel


def _block_softmax(logits: jax.Array, num_experts: int, dtype) -> jax.Array:
    """[BT, W] logits -> [BT, W] softmax over the first num_experts columns; padding -> 0."""
    column = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1)
    x = jnp.where(column < num_experts, logits.astype(dtype), -jnp.inf)
    unnormalized = jnp.exp(x - jnp.max(x, axis=1, keepdims=True))
    return unnormalized / jnp.sum(unnormalized, axis=1, keepdims=True)


def _iterative_topk(probs: jax.Array, num_experts: int, k: int):
    """k passes of argmax, lowest index first among equals.

    Args:
      probs: [BT, W] probabilities (padding columns at index >= num_experts).

    Returns:
      (choices, picked): two lists of k [BT, 1] arrays, int32 expert and its probability.
    """
    width = probs.shape[1]
    column = jax.lax.broadcasted_iota(jnp.int32, probs.shape, 1)
    available = jnp.where(column < num_experts, probs, -1.0)  # a probability is >= 0
    choices, picked = [], []
    for _ in range(k):
        best = jnp.max(available, axis=1, keepdims=True)
        choice = jnp.min(jnp.where(available == best, column, width), axis=1, keepdims=True)
        available = jnp.where(column == choice, -1.0, available)
        choices.append(choice)
        picked.append(best)
    return choices, picked


def _columns(values: list, width: int, dtype) -> jax.Array:
    """k arrays [BT, 1] -> [BT, width] with column j = values[j] and zeros after them."""
    shape = (values[0].shape[0], width)
    column = jax.lax.broadcasted_iota(jnp.int32, shape, 1)
    out = jnp.zeros(shape, dtype)
    for j, value in enumerate(values):
        out = jnp.where(column == j, value.astype(dtype), out)
    return out


def _topk_kernel(logits_ref, gates_ref, idx_ref, rank_ref, counts_ref, *probs_ref,
                 config: _Config, num_tokens: int, num_experts: int):
    """One block of tokens: softmax, top-k, gates, in-block ranks and expert counts.

    Refs: logits [BT, W]; out gates/idx/rank [BT, Kp]; counts [1, W]; probs [BT, W] if asked.
    """
    block, width = logits_ref.shape
    gates_dtype = gates_ref.dtype
    probs = _block_softmax(logits_ref[...], num_experts, gates_dtype)
    if probs_ref:
        probs_ref[0][...] = probs
    choices, picked = _iterative_topk(probs, num_experts, config.top_k)
    gates = _columns(picked, gates_ref.shape[1], gates_dtype)
    if config.normalize:
        gates = gates / (jnp.sum(gates, axis=1, keepdims=True) + _GATE_EPS)
    gates_ref[...] = gates
    idx_ref[...] = _columns(choices, idx_ref.shape[1], jnp.int32)
    column = jax.lax.broadcasted_iota(jnp.int32, (block, width), 1)
    token = pl.program_id(0) * block + jax.lax.broadcasted_iota(jnp.int32, (block, 1), 0)
    chosen = jnp.zeros((block, width), jnp.float32)  # 1 where a real token chose the expert
    for choice in choices:
        chosen = chosen + jnp.where((column == choice) & (token < num_tokens), 1.0, 0.0)
    counts_ref[...] = jnp.sum(chosen, axis=0, keepdims=True).astype(jnp.int32)
    earlier = (jax.lax.broadcasted_iota(jnp.int32, (block, block), 0)
               > jax.lax.broadcasted_iota(jnp.int32, (block, block), 1))
    # before[t, e]: slots of earlier tokens of this block routed to e (0/1 sums: exact)
    before = jnp.dot(earlier.astype(jnp.bfloat16), chosen.astype(jnp.bfloat16),
                     preferred_element_type=jnp.float32)
    ranks = [jnp.sum(jnp.where(column == choice, before, 0.0), axis=1, keepdims=True)
             for choice in choices]
    rank_ref[...] = _columns(ranks, rank_ref.shape[1], jnp.int32)


def _topk_blocks(logits: jax.Array, config: _Config):
    """Runs the kernel over padded blocks.

    Args:
      logits: [T, E] float logits.

    Returns:
      Padded kernel outputs: gates [Tp, Kp], expert_idx [Tp, Kp], in-block rank [Tp, Kp],
      per-block counts [T/BT, 1, W] and probs [Tp, W] (or None), with Tp = T rounded up to
      the block, Kp = k rounded up to a power of two, W = E rounded up to a power of two.
    """
    num_tokens, num_experts = logits.shape
    block = config.block_tokens
    width = max(_MIN_WIDTH, _common.next_power_of_2(num_experts))
    padded_k = _common.next_power_of_2(config.top_k)
    padded_tokens = _common.round_up(num_tokens, block)
    if (padded_tokens, width) != (num_tokens, num_experts):
        logits = jnp.pad(logits, ((0, padded_tokens - num_tokens), (0, width - num_experts)))
    dtype = _common.compute_dtype(logits.dtype)
    num_blocks = padded_tokens // block
    row_block = lambda b: (b, 0)  # noqa: E731
    out_shape = [jax.ShapeDtypeStruct((padded_tokens, padded_k), dtype)]
    out_shape += [jax.ShapeDtypeStruct((padded_tokens, padded_k), jnp.int32)] * 2
    out_shape += [jax.ShapeDtypeStruct((num_blocks, 1, width), jnp.int32)]  # Mosaic: (1, W)
    out_specs = [pl.BlockSpec((block, padded_k), row_block)] * 3
    out_specs += [pl.BlockSpec((None, 1, width), lambda b: (b, 0, 0))]
    if config.return_probs:
        out_shape.append(jax.ShapeDtypeStruct((padded_tokens, width), dtype))
        out_specs.append(pl.BlockSpec((block, width), row_block))
    kernel = functools.partial(_topk_kernel, config=config, num_tokens=num_tokens,
                               num_experts=num_experts)
    outs = pl.pallas_call(
        kernel, out_shape=out_shape, grid=(num_blocks,),
        in_specs=[pl.BlockSpec((block, width), row_block)], out_specs=out_specs,
        interpret=config.interpret, compiler_params=_common.compiler_params(config.interpret),
    )(logits)
    return (*outs, None) if not config.return_probs else tuple(outs)


def _topk_forward(logits: jax.Array, config: _Config) -> TopKDispatch:
    """Kernel plus the cross-block offsets (a jnp cumsum over the [blocks, E] counts)."""
    num_tokens, num_experts = logits.shape
    k = config.top_k
    gates, expert_idx, rank, block_counts, probs = _topk_blocks(logits, config)
    gates, expert_idx, rank = (a[:num_tokens, :k] for a in (gates, expert_idx, rank))
    block_counts = block_counts[:, 0, :num_experts]
    tokens_per_expert = block_counts.sum(0, dtype=jnp.int32)
    block_offset = _common.exclusive_cumsum(block_counts)  # [blocks, E]
    block_id = jnp.arange(num_tokens, dtype=jnp.int32)[:, None] // config.block_tokens
    position = rank + block_offset[block_id, expert_idx]
    return _dispatch(gates, expert_idx, tokens_per_expert, position,
                     None if probs is None else probs[:num_tokens, :num_experts])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _topk_dispatch_pallas(logits: jax.Array, config: _Config) -> TopKDispatch:
    return _topk_forward(logits, config)


def _topk_dispatch_pallas_fwd(logits, config):
    out = _topk_forward(logits, config)
    return out, (logits, out.expert_idx)


def _topk_dispatch_pallas_bwd(config, residuals, cotangent):
    """d logits = softmax Jacobian applied to d probs (k sparse entries, plus d probs if any).

    With g = p / (S + eps) and S the sum of the k picked p: d p_i = (d g_i - sum_j d g_j g_j)
    / (S + eps); then d r = s * (d s - sum_e d s_e s_e) for s = softmax(r).
    """
    logits, expert_idx = residuals
    probs = jax.nn.softmax(logits.astype(_common.compute_dtype(logits.dtype)), axis=-1)
    d_gates = cotangent.gates.astype(probs.dtype)
    picked = jnp.take_along_axis(probs, expert_idx, axis=1)
    if config.normalize:
        denominator = picked.sum(-1, keepdims=True) + _GATE_EPS
        gates = picked / denominator
        d_picked = (d_gates - (d_gates * gates).sum(-1, keepdims=True)) / denominator
    else:
        d_picked = d_gates
    expert = jax.lax.broadcasted_iota(jnp.int32, probs.shape, 1)
    d_probs = jnp.zeros_like(probs)
    if cotangent.probs is not None:
        d_probs = cotangent.probs.astype(probs.dtype)
    for j in range(config.top_k):
        d_probs = d_probs + jnp.where(expert == expert_idx[:, j:j + 1], d_picked[:, j:j + 1], 0.0)
    d_logits = probs * (d_probs - (d_probs * probs).sum(-1, keepdims=True))
    return (d_logits.astype(logits.dtype),)


_topk_dispatch_pallas.defvjp(_topk_dispatch_pallas_fwd, _topk_dispatch_pallas_bwd)
