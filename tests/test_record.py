"""Routing records: concat_records pads E and K as moejax/record.py documents."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.record import RoutingRecord, concat_records, concat_tokens

T = 7
SIZES = [(1, 4, 2), (2, 6, 3), (1, 5, 1)]  # (R, E, K) of each record, in depth order
E_MAX, K_MAX = 6, 3


def _arrays(num_routers, num_experts, top_k, seed, with_cos=True):
    """Random NumPy fields of one record (the expected values before padding)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(num_routers, T, num_experts)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    fields = dict(
        logits=logits,
        probs=probs.astype(np.float32),
        expert_idx=rng.integers(0, num_experts, (num_routers, T, top_k)).astype(np.int32),
        gates=rng.uniform(0.1, 1.0, (num_routers, T, top_k)).astype(np.float32),
        kept=rng.uniform(size=(num_routers, T, top_k)) < 0.8,
        tokens_per_expert=rng.integers(1, 9, (num_routers, num_experts)).astype(np.int32),
        dropped=rng.integers(0, 5, (num_routers,)).astype(np.int32),
        num_experts=np.full((num_routers,), num_experts, np.int32),
        top_k=np.full((num_routers,), top_k, np.int32),
    )
    if with_cos:
        fields["pair_cos"] = rng.uniform(-1, 1, (num_routers, T, top_k, top_k)).astype(np.float32)
    return fields


def _record(fields):
    return RoutingRecord(**{name: jnp.asarray(value) for name, value in fields.items()})


def _pad(value, shape, fill):
    """value placed in the leading corner of an array of `shape` filled with `fill`."""
    out = np.full(shape, fill, value.dtype)
    out[tuple(slice(0, n) for n in value.shape)] = value
    return out


def _expected(all_fields):
    """The concatenation the module docstring promises, built independently in NumPy."""
    padded = {name: [] for name in all_fields[0]}
    for fields in all_fields:
        r = fields["logits"].shape[0]
        padded["logits"].append(_pad(fields["logits"], (r, T, E_MAX), -np.inf))
        padded["probs"].append(_pad(fields["probs"], (r, T, E_MAX), 0.0))
        padded["expert_idx"].append(_pad(fields["expert_idx"], (r, T, K_MAX), -1))
        padded["gates"].append(_pad(fields["gates"], (r, T, K_MAX), 0.0))
        padded["kept"].append(_pad(fields["kept"], (r, T, K_MAX), False))
        padded["tokens_per_expert"].append(_pad(fields["tokens_per_expert"], (r, E_MAX), 0))
        for name in ("dropped", "num_experts", "top_k"):
            padded[name].append(fields[name])
        if "pair_cos" in fields:
            padded["pair_cos"].append(_pad(fields["pair_cos"], (r, T, K_MAX, K_MAX), 0.0))
    return {name: np.concatenate(values, axis=0) for name, values in padded.items()}


@pytest.mark.parametrize("with_cos", [True, False])
def test_concat_pads_and_keeps_depth_order(with_cos):
    all_fields = [_arrays(*size, seed=i, with_cos=with_cos) for i, size in enumerate(SIZES)]
    out = concat_records([_record(f) for f in all_fields])
    expected = _expected(all_fields)
    assert out.num_routers == sum(r for r, _, _ in SIZES) == 4
    for name in (f.name for f in dataclasses.fields(RoutingRecord)):
        got = getattr(out, name)
        if name == "pair_cos" and not with_cos:
            assert got is None
            continue
        want = expected[name]
        assert got.shape == want.shape, name
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=name)
    np.testing.assert_array_equal(out.num_experts, [4, 6, 6, 5])
    np.testing.assert_array_equal(out.top_k, [2, 3, 3, 1])


def test_padded_probs_still_sum_to_one_and_counts_add_up():
    all_fields = [_arrays(*size, seed=10 + i) for i, size in enumerate(SIZES)]
    out = concat_records([_record(f) for f in all_fields])
    np.testing.assert_allclose(np.asarray(out.probs).sum(-1), 1.0, rtol=1e-6)
    assert np.isneginf(np.asarray(out.logits)[0, :, 4:]).all()
    assert np.isfinite(np.asarray(out.logits)[1:3]).all()  # E = 6 = E_MAX: nothing padded
    totals = [f["tokens_per_expert"].sum(-1) for f in all_fields]
    np.testing.assert_array_equal(np.asarray(out.tokens_per_expert).sum(-1),
                                  np.concatenate(totals))
    # padded choices are never kept and never point at an expert
    idx, kept = np.asarray(out.expert_idx), np.asarray(out.kept)
    assert not kept[idx == -1].any()
    assert (idx[3, :, 1:] == -1).all() and (idx[0, :, 2] == -1).all()


def test_single_record_unchanged():
    fields = _arrays(2, 6, 3, seed=20)
    out = concat_records([_record(fields)])
    for name, value in fields.items():
        np.testing.assert_array_equal(np.asarray(getattr(out, name)), value, err_msg=name)


def test_concat_under_jit():
    all_fields = [_arrays(*size, seed=30 + i) for i, size in enumerate(SIZES)]
    records = [_record(f) for f in all_fields]
    out = jax.jit(concat_records)(records)
    expected = _expected(all_fields)
    for name, want in expected.items():
        np.testing.assert_array_equal(np.asarray(getattr(out, name)), want, err_msg=name)


def test_mixing_pair_cos_raises():
    with_cos = _record(_arrays(1, 4, 2, seed=40, with_cos=True))
    without = _record(_arrays(1, 4, 2, seed=41, with_cos=False))
    with pytest.raises(ValueError, match="pair_cos"):
        concat_records([with_cos, without])
    with pytest.raises(ValueError, match="pair_cos"):
        concat_records([without, with_cos])


def test_empty_list_raises():
    with pytest.raises(ValueError, match="at least one record"):
        concat_records([])


@pytest.mark.parametrize("with_cos", [True, False])
def test_concat_tokens_joins_micro_batches(with_cos):
    parts = [_arrays(2, 4, 2, seed, with_cos) for seed in (1, 2)]
    joined = concat_tokens([_record(p) for p in parts])
    for name in ("logits", "probs", "expert_idx", "gates", "kept", *(["pair_cos"] * with_cos)):
        np.testing.assert_array_equal(getattr(joined, name),
                                      np.concatenate([p[name] for p in parts], axis=1))
    for name in ("tokens_per_expert", "dropped"):
        np.testing.assert_array_equal(getattr(joined, name), parts[0][name] + parts[1][name])
    np.testing.assert_array_equal(joined.num_experts, parts[0]["num_experts"])
    assert (joined.pair_cos is None) == (not with_cos)
