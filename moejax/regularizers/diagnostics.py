"""Routing metrics over a model's routing record (docs/methods.md section 6).

Every metric is computed from sums (token counts, entropy sums, co-occurrence counts) that
are summed over the data-parallel shards when `axis_name` is given, so the value on each
shard is the value of the global batch. All values are per router ([R]) or per adjacent pair
([R-1]); take `.mean()` for the model-level number.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.record import RoutingRecord
from moejax.regularizers.coupling import topk_mass
from moejax.regularizers.specialization import kept_pair_sums


def _sum(x, axis_name):
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def _entropy(p, axis):
    """Shannon entropy (nats) of distributions p along axis; 0 log 0 = 0."""
    return -jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0).sum(axis)


def _load_metrics(record, valid, axis_name):
    counts = _sum(record.tokens_per_expert.astype(jnp.float32), axis_name)  # [R, E]
    num_e = record.num_experts.astype(jnp.float32)
    mean = counts.sum(-1) / num_e
    std = jnp.sqrt(jnp.where(valid, (counts - mean[:, None]) ** 2, 0.0).sum(-1) / num_e)
    tokens = _sum(jnp.asarray(record.kept.shape[1], jnp.float32), axis_name)
    slots = tokens * record.top_k.astype(jnp.float32)
    return {
        "tokens_per_expert": counts,
        "load_min": jnp.where(valid, counts, jnp.inf).min(-1),
        "load_max": jnp.where(valid, counts, -jnp.inf).max(-1),
        "load_cv": std / jnp.maximum(mean, 1e-9),
        "dead_experts": (valid & (counts == 0)).sum(-1),
        "dropped_fraction": _sum(record.dropped.astype(jnp.float32), axis_name) / slots,
    }


def transition_counts(record: RoutingRecord, axis_name=None) -> jax.Array:
    """[R-1, E, E] counts of (top-1 expert of router l, top-1 expert of router l+1)."""
    num_experts = record.probs.shape[-1]
    top1 = jax.nn.one_hot(record.expert_idx[..., 0], num_experts, dtype=jnp.float32)
    return _sum(jnp.einsum("LTE,LTF->LEF", top1[:-1], top1[1:]), axis_name)


def pathway_entropy(record: RoutingRecord, axis_name=None) -> jax.Array:
    """[R-1] H(e^{l+1} | e^l) of top-1 choices, normalised by log E_{l+1} (0 = deterministic)."""
    joint = transition_counts(record, axis_name)
    joint = joint / jnp.maximum(joint.sum((-2, -1), keepdims=True), 1.0)
    conditional = _entropy(joint.reshape(joint.shape[0], -1), -1) - _entropy(joint.sum(-1), -1)
    return conditional / jnp.maximum(jnp.log(record.num_experts[1:].astype(jnp.float32)), 1e-9)


def domain_counts(record: RoutingRecord, domains, num_domains: int, axis_name=None):
    """[R, E, num_domains] counts of (top-1 expert, domain label) over tokens.

    Args:
      domains: [T] int domain label of each token.
      num_domains: number of domain labels.
    """
    expert = jax.nn.one_hot(record.expert_idx[..., 0], record.probs.shape[-1], dtype=jnp.float32)
    domain = jax.nn.one_hot(domains, num_domains, dtype=jnp.float32)
    return _sum(jnp.einsum("RTE,TD->RED", expert, domain), axis_name)


@jax.jit  # also called on the host with pooled counts: one compile, not one per op
def nmi_from_counts(joint) -> jax.Array:
    """[R] normalised mutual information 2 I / (H(expert) + H(domain)) of count tables.

    Args:
      joint: [R, E, num_domains] counts (e.g. `domain_counts` pooled over batches).

    Returns:
      [R] in [0, 1]; 0 when either marginal is constant.
    """
    joint = jnp.asarray(joint, jnp.float32)
    joint = joint / jnp.maximum(joint.sum((-2, -1), keepdims=True), 1.0)
    h_expert, h_domain = _entropy(joint.sum(-1), -1), _entropy(joint.sum(-2), -1)
    mutual = h_expert + h_domain - _entropy(joint.reshape(joint.shape[0], -1), -1)
    return jnp.where(h_expert * h_domain > 0, 2 * mutual / (h_expert + h_domain + 1e-12), 0.0)


def domain_nmi(record: RoutingRecord, domains, num_domains: int, axis_name=None) -> jax.Array:
    """[R] normalised mutual information between top-1 expert and domain label."""
    return nmi_from_counts(domain_counts(record, domains, num_domains, axis_name))


def routing_metrics(record: RoutingRecord, *, domains=None, num_domains=None, axis_name=None):
    """All routing metrics of a record.

    Args:
      record: R routers over T tokens.
      domains: optional [T] int domain labels (for "domain_nmi").
      num_domains: number of domain labels.
      axis_name: data-parallel mesh axis name(s) to reduce over inside shard_map.

    Returns:
      dict of arrays: entropy, topk_mass, load_min, load_max, load_cv, dead_experts,
      dropped_fraction, tokens_per_expert [R, E], and when available specialization [R],
      pathway_entropy [R-1], transitions [R-1, E, E], domain_nmi [R] and
      domain_counts [R, E, num_domains].
    """
    valid = jnp.arange(record.probs.shape[-1])[None, :] < record.num_experts[:, None]
    tokens = _sum(jnp.asarray(record.probs.shape[1], jnp.float32), axis_name)
    metrics = {
        "entropy": _sum(_entropy(record.probs, -1).sum(-1), axis_name) / tokens,
        "topk_mass": _sum(topk_mass(record.probs, record.expert_idx).sum(-1), axis_name) / tokens,
        **_load_metrics(record, valid, axis_name),
    }
    if record.pair_cos is not None:  # the specialization loss's value: mean over kept pairs
        summed, pairs = kept_pair_sums(record.pair_cos.astype(jnp.float32), record.top_k)
        metrics["specialization"] = (_sum(summed.sum(-1), axis_name)
                                     / jnp.maximum(_sum(pairs.sum(-1), axis_name), 1.0))
    if record.num_routers >= 2:
        metrics["pathway_entropy"] = pathway_entropy(record, axis_name)
        metrics["transitions"] = transition_counts(record, axis_name)
    if domains is not None:
        if num_domains is None:
            raise ValueError("domain_nmi needs num_domains with domains")
        metrics["domain_nmi"] = domain_nmi(record, domains, num_domains, axis_name)
        metrics["domain_counts"] = domain_counts(record, domains, num_domains, axis_name)
    return metrics
