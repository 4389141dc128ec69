"""Router: the first stage of the data path, x -> (logits, probs, expert_idx, gates).

Implements docs/methods.md section 2. All router math runs in float32 whatever the model dtype.

Kinds (`RouterSpec.kind`):
- "softmax_topk": s = softmax(r), top-k of s; gates are the picked s, optionally renormalised
  (`normalize_gates`; Mixtral, Qwen-MoE and DeepSeekMoE).
- "topk_softmax": top-k of r, gates = softmax over the k picked logits.
- "sigmoid": s = sigmoid(r), top-k of s + b where b is the selection-only bias (DeepSeek-V3
  aux-loss-free balancing); gates from s without b, optionally renormalised.
Every kind may add the selection-only bias, restrict selection to the best `top_groups` of
`num_groups` expert groups (group-limited routing; a group's score is the sum of its two best
selection scores, DeepSeek-V3, or its best one, DeepSeek-V2: `group_score`), scale the gates
by `scaling_factor`, and multiply its input by uniform jitter in [1 - jitter, 1 + jitter] in
training (Switch).

`probs`, the distribution the losses read, is softmax(r) for the softmax kinds and the
normalised sigmoid s / sum_e s_e for "sigmoid" (DeepSeek-V3's balance-loss affinities).

Hugging Face transformers 5.18 routers as RouterSpecs (equal selection and gates; HF returns
its k picks unsorted, moejax best first):
- DeepseekV3TopkRouter: kind="sigmoid", use_bias (`e_score_correction_bias` is `Router.bias`),
  num_groups=n_group, top_groups=topk_group, group_score="top2_sum",
  normalize_gates=norm_topk_prob (both divide by sum + 1e-20), scaling_factor=
  routed_scaling_factor (applied after the normalisation in both).
- DeepseekV2TopkRouter, topk_method="greedy": kind="softmax_topk", normalize_gates=False,
  scaling_factor=routed_scaling_factor; "group_limited_greedy": the same with
  num_groups=n_group, top_groups=topk_group, group_score="max".
- Qwen2MoeTopKRouter: kind="softmax_topk", normalize_gates=norm_topk_prob.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import MappingProxyType
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.kernels import TopKDispatch, topk_dispatch, use_pallas
from moejax.layers.dtypes import at_least_float32
from moejax.options import check_choice, check_int, check_range


class RouterKind(NamedTuple):
    """What a router kind computes from the float32 logits.

    Attributes:
      probs: logits [T, E] -> the distribution [T, E] the losses read (rows sum to 1).
      scores: logits [T, E] -> selection scores [T, E] (top-k is taken of these + the bias).
      gates: (picked scores [T, K], normalize_gates) -> gates [T, K].
    """

    probs: Callable[[jax.Array], jax.Array]
    scores: Callable[[jax.Array], jax.Array]
    gates: Callable[[jax.Array, bool], jax.Array]


def _renormalised(picked: jax.Array, normalize: bool) -> jax.Array:
    return picked / (picked.sum(-1, keepdims=True) + 1e-20) if normalize else picked


def _softmax_over_picked(picked: jax.Array, normalize: bool) -> jax.Array:
    del normalize  # a softmax sums to 1 anyway
    return jax.nn.softmax(picked, axis=-1)


def _softmax(logits: jax.Array) -> jax.Array:
    return jax.nn.softmax(logits, axis=-1)


def normalised_sigmoid(logits: jax.Array) -> jax.Array:
    """[T, E] logits -> sigmoid(r_e) / sum_e' sigmoid(r_e') [T, E] (DeepSeek-V3's s'),
    computed as softmax(log sigmoid(r)): rows sum to 1 even where every sigmoid underflows."""
    return jax.nn.softmax(jax.nn.log_sigmoid(logits), axis=-1)


ROUTER_KINDS = MappingProxyType({
    "softmax_topk": RouterKind(_softmax, _softmax, _renormalised),
    "topk_softmax": RouterKind(_softmax, lambda logits: logits, _softmax_over_picked),
    "sigmoid": RouterKind(normalised_sigmoid, jax.nn.sigmoid, _renormalised),
})

# RouterSpec.group_score -> how many of a group's best selection scores make its score
GROUP_SCORES = MappingProxyType({"top2_sum": 2, "max": 1})


@dataclasses.dataclass(frozen=True)
class RouterSpec:
    """Routing options; the expert count and k belong to the block (`MoESpec`).

    Attributes:
      kind: one of ROUTER_KINDS.
      normalize_gates: renormalise the k gates to sum 1 (softmax_topk and sigmoid).
      scaling_factor: multiplies the gates (DeepSeek-V3 `routed_scaling_factor`).
      num_groups: expert groups for group-limited routing (1 = off); must divide E.
      top_groups: groups kept per token when num_groups > 1.
      group_score: a key of GROUP_SCORES, how a group is scored: "top2_sum" (the sum of its
        two best selection scores, DeepSeek-V3) or "max" (its best, DeepSeek-V2
        `group_limited_greedy`). Experts outside the kept groups are masked to -inf; V2 masks
        them to 0.0 instead, which selects the same experts because softmax scores are > 0
        and `check` ensures top_groups * group_size >= k (a kept score that underflows to
        exactly 0.0 would tie with the masked ones there).
      use_bias: keep a selection-only bias per expert (aux-loss-free balancing).
      jitter: multiplicative input jitter amplitude in training (0 = off).
    """

    kind: str = "softmax_topk"
    normalize_gates: bool = True
    scaling_factor: float = 1.0
    num_groups: int = 1
    top_groups: int = 1
    group_score: str = "top2_sum"
    use_bias: bool = False
    jitter: float = 0.0

    def __post_init__(self):
        check_choice("router.kind", self.kind, ROUTER_KINDS)
        check_choice("router.group_score", self.group_score, GROUP_SCORES)
        check_int("router.num_groups", self.num_groups)
        check_int("router.top_groups", self.top_groups)
        if self.top_groups > self.num_groups:
            raise ValueError(
                f"router.top_groups={self.top_groups} must be in [1, router.num_groups="
                f"{self.num_groups}]"
            )
        check_range("router.scaling_factor", self.scaling_factor, 0.0, low_open=True)
        check_range("router.jitter", self.jitter, 0.0, 1.0, high_open=True)

    def check(self, num_experts: int, top_k: int) -> None:
        """Raises ValueError when these options do not fit E experts and k choices."""
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be in [1, num_experts={num_experts}]")
        if num_experts % self.num_groups:
            raise ValueError(
                f"router.num_groups={self.num_groups} does not divide num_experts={num_experts}"
            )
        group_size = num_experts // self.num_groups
        if self.top_groups * group_size < top_k:
            raise ValueError(
                f"router.top_groups={self.top_groups} groups of {group_size} experts hold fewer "
                f"than top_k={top_k} experts"
            )


class Routing(NamedTuple):
    """Output of `route`.

    Attributes:
      logits: [T, E] float32.
      probs: [T, E] float32 distribution the losses read (`RouterKind.probs`): softmax of
        the logits, or for "sigmoid" the normalised sigmoid s / sum_e s_e (no bias).
      expert_idx: [T, K] int32 chosen experts, best first (ties: lowest index).
      gates: [T, K] float32 combine weights.
      dispatch: the fused kernel's output (counts and expert-sorted positions) when it
        routed, else None; `make_plan` then skips its argsort.
    """

    logits: jax.Array
    probs: jax.Array
    expert_idx: jax.Array
    gates: jax.Array
    dispatch: TopKDispatch | None = None


def _group_limit(selection: jax.Array, num_groups: int, top_groups: int,
                 group_score: str) -> jax.Array:
    """Masks experts outside each token's best groups to -inf.

    selection: [T, E]; a group's score is the sum of its GROUP_SCORES[group_score] best
    selection scores (all of them in groups smaller than that). Returns [T, E].
    """
    tokens, num_experts = selection.shape
    grouped = selection.reshape(tokens, num_groups, num_experts // num_groups)
    best = jax.lax.top_k(grouped, min(GROUP_SCORES[group_score], grouped.shape[-1]))[0]
    group_scores = best.sum(-1)  # [T, G]
    _, top_group_idx = jax.lax.top_k(group_scores, top_groups)
    keep = jnp.zeros((tokens, num_groups), bool).at[
        jnp.arange(tokens)[:, None], top_group_idx
    ].set(True)
    keep = jnp.repeat(keep, num_experts // num_groups, axis=1)
    return jnp.where(keep, selection, -jnp.inf)


def _select(selection: jax.Array, spec: RouterSpec, top_k: int) -> jax.Array:
    """[T, E] selection scores -> [T, K] chosen experts (group-limited if configured)."""
    if spec.num_groups > 1:
        selection = _group_limit(selection, spec.num_groups, spec.top_groups, spec.group_score)
    return jax.lax.top_k(selection, top_k)[1]


def route(
    x: jax.Array,
    w_router: jax.Array,
    spec: RouterSpec,
    top_k: int,
    *,
    bias: jax.Array | None = None,
    disable_top1: bool = False,
    implementation: str = "jnp",
) -> Routing:
    """Routes T tokens to k of E experts.

    Args:
      x: [T, D] activations (any float dtype; router math runs in float32 or wider).
      w_router: [D, E] router weights.
      spec: routing options.
      top_k: k, experts chosen per token.
      bias: [E] selection-only bias (added to the scores for selection only), or None.
      disable_top1: drop each token's first choice and re-pick top-k from the remaining
        experts (CartesianMoE's robustness test); gates are computed over the new picks.
      implementation: "jnp", "pallas" or "auto": where `kernels.use_pallas(implementation)`,
        a plain softmax_topk routing (no bias, groups or disabled top-1) runs as the fused
        `kernels.topk_dispatch`, which also returns the dispatch positions.

    Returns:
      Routing with logits/probs [T, E] and expert_idx/gates [T, K].
    """
    dtype = at_least_float32(x.dtype)
    logits = jnp.einsum("TD,DE->TE", x.astype(dtype), w_router.astype(dtype))
    fusable = (spec.kind == "softmax_topk" and bias is None and spec.num_groups == 1
               and not disable_top1)
    if fusable and use_pallas(implementation):
        fused = topk_dispatch(logits, top_k, normalize=spec.normalize_gates, return_probs=True,
                              implementation=implementation)
        return Routing(logits, fused.probs, fused.expert_idx,
                       fused.gates * spec.scaling_factor, fused)
    kind = ROUTER_KINDS[spec.kind]
    probs = kind.probs(logits)
    scores = kind.scores(logits)
    selection = scores if bias is None else scores + bias.astype(dtype)
    expert_idx = _select(selection, spec, top_k)
    if disable_top1:
        first = jax.nn.one_hot(expert_idx[:, 0], selection.shape[-1], dtype=bool)
        expert_idx = _select(jnp.where(first, -jnp.inf, selection), spec, top_k)
    picked = jnp.take_along_axis(scores, expert_idx, axis=-1)
    gates = kind.gates(picked, spec.normalize_gates) * spec.scaling_factor
    return Routing(logits, probs, expert_idx.astype(jnp.int32), gates)


def apply_jitter(x: jax.Array, amplitude: float, key: jax.Array) -> jax.Array:
    """Multiplies x [T, D] by uniform noise in [1 - amplitude, 1 + amplitude] (Switch)."""
    noise = jax.random.uniform(key, x.shape, jnp.float32, 1.0 - amplitude, 1.0 + amplitude)
    return (x.astype(jnp.float32) * noise).astype(x.dtype)


class RouterBias(nnx.Variable):
    """Selection-only router bias [E]: not a Param, updated outside the optimizer."""


class Router(nnx.Module):
    """Owns the router weights [D, E] and, when `spec.use_bias`, the selection bias [E]."""

    def __init__(self, d_model: int, num_experts: int, top_k: int, spec: RouterSpec, *,
                 rngs: nnx.Rngs):
        spec.check(num_experts, top_k)
        self.spec = spec
        self.top_k = top_k
        init = nnx.initializers.normal(stddev=d_model**-0.5)
        self.kernel = nnx.Param(init(rngs.params(), (d_model, num_experts), jnp.float32))
        self.bias = RouterBias(jnp.zeros((num_experts,), jnp.float32)) if spec.use_bias else None
        # its own stream (key and count): under a scanned stack each layer's key is its own
        self.rngs = nnx.Rngs(jitter=rngs.jitter()) if spec.jitter > 0 else None
        self.deterministic = False

    def __call__(self, x: jax.Array, *, disable_top1: bool = False,
                 implementation: str = "jnp") -> Routing:
        """x: [T, D] -> Routing; see `route`. `self.kernel` is the weight [D, E]."""
        if self.rngs is not None and not self.deterministic:
            x = apply_jitter(x, self.spec.jitter, self.rngs.jitter())
        bias = None if self.bias is None else self.bias[...]
        return route(x, self.kernel[...], self.spec, self.top_k, bias=bias,
                     disable_top1=disable_top1, implementation=implementation)
