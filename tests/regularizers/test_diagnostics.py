"""moejax/regularizers/diagnostics.py against the float64 NumPy oracle
(docs/methods.md section 6)."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from moejax.record import RoutingRecord
from moejax.regularizers import routing_metrics as _routing_metrics
from tests.regularizers.reference_losses import counts as counts_ref
from tests.regularizers.reference_losses import (
    domain_nmi,
    entropy,
    load_stats,
    mean_topk_mass,
    pathway_entropy,
    specialization_from_cosine,
    transitions,
)
from tests.regularizers.regularizer_inputs import (
    NUM_DEVICES,
    PADDED_SHAPES,
    R,
    T,
    data_mesh,
    random_routers,
)

NUM_DOMAINS = 4
SHARDED_T = 40  # 8 shards of 5 tokens
# jitted: one compilation per record shape instead of one per operation
routing_metrics = jax.jit(_routing_metrics, static_argnames=("num_domains", "axis_name"))


def _domains(routers, seed):
    """Domain labels that depend on the first router's top-1 expert, with some noise."""
    rng = np.random.default_rng(seed)
    top1 = routers.expert_idx[0][:, 0]
    noisy = rng.integers(0, NUM_DOMAINS, size=top1.shape)
    return np.where(rng.random(top1.shape) < 0.7, top1 % NUM_DOMAINS, noisy).astype(np.int32)


def _reference(routers, domains, tokens):
    shapes = [p.shape for p in routers.probs]
    loads = [counts_ref(idx, e) for idx, (_, e) in zip(routers.expert_idx, shapes)]
    stats = [load_stats(load) for load in loads]
    top_k = [idx.shape[1] for idx in routers.expert_idx]
    ref = {
        "entropy": entropy(routers.probs),
        "topk_mass": mean_topk_mass(routers.probs, routers.expert_idx),
        **{name: [s[name] for s in stats] for name in stats[0]},
        "dropped_fraction": [d / (tokens * k) for d, k in zip(routers.dropped, top_k)],
        "specialization": specialization_from_cosine(routers.cos)[1],
        "pathway_entropy": [
            pathway_entropy(routers.expert_idx[r], routers.expert_idx[r + 1], shapes[r + 1][1])
            for r in range(len(shapes) - 1)],
        "domain_nmi": [domain_nmi(idx, domains) for idx in routers.expert_idx],
    }
    return ref, loads


def _assert_metrics(metrics, ref, loads, rtol=1e-5):
    for name, expected in ref.items():
        np.testing.assert_allclose(np.asarray(metrics[name], np.float64), expected, rtol=rtol,
                                   atol=1e-7, err_msg=name)
    for r, load in enumerate(loads):
        np.testing.assert_array_equal(np.asarray(metrics["tokens_per_expert"][r, :len(load)]),
                                      load)
        assert not np.asarray(metrics["tokens_per_expert"][r, len(load):]).any()


def _assert_transitions(metrics, routers):
    sizes = [p.shape[1] for p in routers.probs]
    for r in range(len(sizes) - 1):
        expected = transitions(routers.expert_idx[r], routers.expert_idx[r + 1], sizes[r],
                               sizes[r + 1])
        got = np.asarray(metrics["transitions"][r])
        np.testing.assert_array_equal(got[:sizes[r], :sizes[r + 1]], expected)
        assert got.sum() == expected.sum()


def test_padded_record_matches_reference():
    routers = random_routers(70, shapes=PADDED_SHAPES, dead=1)
    domains = _domains(routers, 70)
    metrics = routing_metrics(routers.record, domains=jnp.asarray(domains),
                              num_domains=NUM_DOMAINS)
    ref, loads = _reference(routers, domains, T)
    assert all(s["dead_experts"] >= 1 for s in map(load_stats, loads))
    assert min(ref["domain_nmi"]) > 0.01
    _assert_metrics(metrics, ref, loads)
    _assert_transitions(metrics, routers)
    assert metrics["pathway_entropy"].shape == (R - 1,)
    assert metrics["transitions"].shape == (R - 1, 6, 6)


def test_optional_metrics_are_left_out():
    routers = random_routers(71, shapes=((6, 3),))
    record = dataclasses.replace(routers.record, pair_cos=None)
    metrics = routing_metrics(record)
    for name in ("specialization", "pathway_entropy", "transitions", "domain_nmi"):
        assert name not in metrics
    with pytest.raises(ValueError, match="num_domains"):
        routing_metrics(record, domains=jnp.zeros((T,), jnp.int32))


def _top1_record(top1_per_router, experts=6):
    """A record whose only meaningful content is each router's top-1 choice [R, T]."""
    top1 = jnp.asarray(top1_per_router, jnp.int32)
    routers, tokens = top1.shape
    idx = jnp.stack([top1, (top1 + 1) % experts], -1)
    probs = jnp.full((routers, tokens, experts), 1.0 / experts, jnp.float32)
    counts = jax.nn.one_hot(idx, experts, dtype=jnp.int32).sum((1, 2))
    return RoutingRecord(
        logits=jnp.zeros_like(probs), probs=probs, expert_idx=idx,
        gates=jnp.full(idx.shape, 0.5, jnp.float32), kept=jnp.ones(idx.shape, bool),
        tokens_per_expert=counts, dropped=jnp.zeros((routers,), jnp.int32),
        num_experts=jnp.full((routers,), experts, jnp.int32),
        top_k=jnp.full((routers,), 2, jnp.int32))


def test_pathway_entropy_and_nmi_extremes():
    experts = 6
    first = np.repeat(np.arange(experts), experts)  # with `independent`: every pair once
    independent = np.tile(np.arange(experts), experts)
    bijection = (first * 5 + 1) % experts  # a function of the first router's choice
    record = _top1_record(np.stack([first, bijection, independent]))
    metrics = [routing_metrics(record, domains=jnp.asarray(domains, jnp.int32),
                               num_domains=experts)
               for domains in (first % 3, first, np.zeros_like(first))]
    # H(bijection | first) = 0; H(independent | bijection) = log E
    np.testing.assert_allclose(np.asarray(metrics[0]["pathway_entropy"]), [0.0, 1.0],
                               rtol=1e-5, atol=1e-6)
    partial = 2 * math.log(3) / (math.log(6) + math.log(3))  # domain = first % 3
    np.testing.assert_allclose(np.asarray(metrics[0]["domain_nmi"]), [partial, partial, 0.0],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(metrics[1]["domain_nmi"]), [1.0, 1.0, 0.0],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(metrics[2]["domain_nmi"]), [0.0, 0.0, 0.0], atol=1e-7)


def _shard_counts(routers, shards):
    """Per-shard tokens_per_expert [shards, R, E] of a padded record's expert_idx."""
    idx = np.asarray(routers.record.expert_idx)
    experts = routers.record.probs.shape[-1]
    per_shard = np.split(idx, shards, axis=1)
    return np.stack([np.stack([counts_ref(i[r][i[r] >= 0].reshape(-1, 1), experts)
                               for r in range(idx.shape[0])]) for i in per_shard])


def test_sharded_over_tokens_equals_unsharded():
    routers = random_routers(72, shapes=PADDED_SHAPES, tokens=SHARDED_T)
    record = routers.record
    domains = jnp.asarray(_domains(routers, 72))
    rng = np.random.default_rng(72)
    dropped = rng.integers(0, 3, size=(NUM_DEVICES, R)).astype(np.int32)
    whole = dataclasses.replace(record, dropped=jnp.asarray(dropped.sum(0)))
    sharded_record = dataclasses.replace(
        record, tokens_per_expert=jnp.asarray(_shard_counts(routers, NUM_DEVICES), jnp.int32),
        dropped=jnp.asarray(dropped))
    per_token, replicated = P(None, "data"), P()
    record_specs = RoutingRecord(
        logits=per_token, probs=per_token, expert_idx=per_token, gates=per_token,
        kept=per_token, tokens_per_expert=P("data"), dropped=P("data"),
        num_experts=replicated, top_k=replicated, pair_cos=per_token)

    def local(rec, dom):
        rec = dataclasses.replace(rec, tokens_per_expert=rec.tokens_per_expert[0],
                                  dropped=rec.dropped[0])
        return routing_metrics(rec, domains=dom, num_domains=NUM_DOMAINS, axis_name="data")

    sharded = jax.jit(jax.shard_map(local, mesh=data_mesh(), in_specs=(record_specs, P("data")),
                                    out_specs=P(), check_vma=True))(sharded_record, domains)
    expected = routing_metrics(whole, domains=domains, num_domains=NUM_DOMAINS)
    assert set(sharded) == set(expected)
    for name in expected:
        np.testing.assert_allclose(np.asarray(sharded[name]), np.asarray(expected[name]),
                                   rtol=1e-5, atol=1e-7, err_msg=name)
    routers.dropped = list(dropped.sum(0))
    ref, loads = _reference(routers, np.asarray(domains), SHARDED_T)
    _assert_metrics(sharded, ref, loads)
