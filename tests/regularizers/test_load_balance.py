"""moejax/regularizers/load_balance.py against the float64 NumPy oracle
(docs/methods.md section 5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from moejax.regularizers import load_balance_loss
from tests.regularizers.reference_losses import load_balance as lb_ref
from tests.regularizers.regularizer_inputs import (
    PADDED_SHAPES,
    R,
    assert_directional,
    central_difference,
    check_mean_and_per_router,
    data_mesh,
    float64_direction,
    random_routers,
    stack,
)

SEQUENCE_T, SEQUENCE_LENGTH = 35, 7
SHARDED_T = 40  # 8 shards of 5 tokens


def test_matches_reference_stacked():
    routers = random_routers(0)
    values = load_balance_loss(stack(routers.probs), stack(routers.expert_idx))
    assert values[1].shape == (R,)
    check_mean_and_per_router(values, lb_ref(routers.probs, routers.expert_idx))


def test_single_router_without_router_axis():
    routers = random_routers(1, shapes=((6, 3),))
    mean, per_router = load_balance_loss(jnp.asarray(routers.probs[0]),
                                         jnp.asarray(routers.expert_idx[0]))
    assert per_router.shape == (1,)
    np.testing.assert_allclose(float(mean), lb_ref(routers.probs, routers.expert_idx)[0],
                               rtol=1e-5)


def test_padded_record_matches_reference():
    routers = random_routers(2, shapes=PADDED_SHAPES)
    record = routers.record
    values = load_balance_loss(record.probs, record.expert_idx, num_experts=record.num_experts)
    check_mean_and_per_router(values, lb_ref(routers.probs, routers.expert_idx))
    # the padding must be told: the padded E would scale every router by max E
    unaware = load_balance_loss(record.probs, record.expert_idx)[1]
    assert not np.allclose(np.asarray(unaware), lb_ref(routers.probs, routers.expert_idx)[1])


def test_num_experts_as_int_equals_default():
    routers = random_routers(3)
    probs, idx = stack(routers.probs), stack(routers.expert_idx)
    np.testing.assert_allclose(np.asarray(load_balance_loss(probs, idx, num_experts=6)[1]),
                               np.asarray(load_balance_loss(probs, idx)[1]), rtol=1e-6)


def test_sequence_wise_matches_reference():
    routers = random_routers(4, shapes=PADDED_SHAPES, tokens=SEQUENCE_T)
    record = routers.record
    values = load_balance_loss(record.probs, record.expert_idx, num_experts=record.num_experts,
                               sequence_length=SEQUENCE_LENGTH)
    reference = lb_ref(routers.probs, routers.expert_idx, sequence_length=SEQUENCE_LENGTH)
    check_mean_and_per_router(values, reference)
    batch = lb_ref(routers.probs, routers.expert_idx)[1]
    assert not np.allclose(reference[1], batch)  # the variant really differs from the batch one


def test_sequence_of_whole_batch_equals_batch_variant():
    routers = random_routers(5, tokens=SEQUENCE_T)
    probs, idx = stack(routers.probs), stack(routers.expert_idx)
    np.testing.assert_allclose(
        np.asarray(load_balance_loss(probs, idx, sequence_length=SEQUENCE_T)[1]),
        np.asarray(load_balance_loss(probs, idx)[1]), rtol=1e-6)


def test_sequence_length_must_divide_tokens():
    routers = random_routers(6)
    with pytest.raises(ValueError, match="sequence_length=5"):
        load_balance_loss(stack(routers.probs), stack(routers.expert_idx), sequence_length=5)


def test_extra_tokens_per_expert_matches_reference():
    routers = random_routers(7, shapes=PADDED_SHAPES)
    record = routers.record
    rng = np.random.default_rng(7)
    extra = [rng.integers(0, 40, size=e) for e, _ in PADDED_SHAPES]
    padded = np.zeros((R, 6), np.float32)
    for r, row in enumerate(extra):
        padded[r, :len(row)] = row
    values = load_balance_loss(record.probs, record.expert_idx, num_experts=record.num_experts,
                               extra_tokens_per_expert=jnp.asarray(padded))
    check_mean_and_per_router(values, lb_ref(routers.probs, routers.expert_idx,
                                             extra_tokens_per_expert=extra))


def test_uniform_assignment_is_one():
    tokens, experts, k = 12, 6, 3  # E divides T * K
    idx = (np.arange(tokens)[:, None] + np.arange(k)[None, :]) % experts
    probs = jnp.full((tokens, experts), 1.0 / experts, jnp.float32)
    mean, _ = load_balance_loss(probs, jnp.asarray(idx, jnp.int32))
    np.testing.assert_allclose(float(mean), 1.0, rtol=1e-6)
    # collapsed routing with matching confident probs is penalised
    collapsed = np.tile(np.arange(k), (tokens, 1))
    peaked = np.full((tokens, experts), 0.01)
    peaked[:, :k] = (1.0 - 0.01 * (experts - k)) / k
    worse, _ = load_balance_loss(jnp.asarray(peaked, jnp.float32),
                                 jnp.asarray(collapsed, jnp.int32))
    assert float(worse) > 1.5


def test_routers_are_averaged_not_concatenated():
    tokens, experts, k = 12, 6, 2
    rng = np.random.default_rng(8)
    probs = np.stack([np.tile(np.array([0.5, 0.3, 0.05, 0.05, 0.05, 0.05]), (tokens, 1)),
                      rng.dirichlet(np.ones(experts), tokens)]).astype(np.float32)
    idx = np.stack([np.tile([0, 1], (tokens, 1)),
                    (np.arange(tokens)[:, None] * k + np.arange(k)) % experts]).astype(np.int32)
    mean, per_router = load_balance_loss(jnp.asarray(probs), jnp.asarray(idx))
    singles = [float(load_balance_loss(jnp.asarray(probs[r]), jnp.asarray(idx[r]))[0])
               for r in range(2)]
    np.testing.assert_allclose(np.asarray(per_router), singles, rtol=1e-6)
    np.testing.assert_allclose(float(mean), np.mean(singles), rtol=1e-6)
    pooled = lb_ref([np.concatenate(probs)], [np.concatenate(idx)])[0]
    assert abs(float(mean) - pooled) > 0.1  # pooling the tokens would hide the imbalance


@pytest.mark.parametrize("sequence_length", [None, SEQUENCE_LENGTH])
def test_gradient_matches_finite_differences(sequence_length):
    routers = random_routers(9, tokens=SEQUENCE_T)
    idx = stack(routers.expert_idx)
    with jax.enable_x64(True):
        probs = jnp.asarray(np.stack(routers.probs), jnp.float64)

        @jax.jit
        def loss(p):
            return load_balance_loss(p, idx, sequence_length=sequence_length)[0]

        check_grads(loss, (probs,), order=1, modes=["rev"])
        grad = jax.grad(loss)(probs)
    direction = float64_direction(9, probs.shape)
    fd = central_difference(
        lambda p: lb_ref(list(p), routers.expert_idx, sequence_length=sequence_length)[0],
        np.stack(routers.probs), direction)
    assert_directional(grad, direction, fd)


def test_padded_gradient_is_zero_on_padding():
    record = random_routers(10, shapes=PADDED_SHAPES).record
    grad = jax.grad(lambda p: load_balance_loss(p, record.expert_idx,
                                                num_experts=record.num_experts)[0])(record.probs)
    assert float(jnp.abs(grad[1, :, 4:]).max()) == 0.0
    assert float(jnp.abs(grad[2, :, 5:]).max()) == 0.0
    assert float(jnp.abs(grad[1, :, :4]).max()) > 0.0


def test_global_batch_over_data_shards_equals_whole_batch():
    """Sharded over T on 8 devices, every shard gets the loss of the whole batch.

    With check_vma=True the pmean of the local P is transposed correctly, so both the gradient
    of the shard_mapped loss and each shard's local gradient equal the whole-batch gradient.
    """
    record = random_routers(11, shapes=PADDED_SHAPES, tokens=SHARDED_T).record
    probs, idx, num_e = record.probs, record.expert_idx, record.num_experts
    mesh = data_mesh()

    def whole(p):
        return load_balance_loss(p, idx, num_experts=num_e)[0]

    def local(p, i):
        return load_balance_loss(p, i, num_experts=num_e, axis_name="data")[0]

    specs = (P(None, "data"), P(None, "data"))
    sharded = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P(), check_vma=True)
    value, outer = jax.jit(jax.value_and_grad(sharded))(probs, idx)
    np.testing.assert_allclose(float(value), float(whole(probs)), rtol=1e-5)
    expected = jax.grad(whole)(probs)
    np.testing.assert_allclose(np.asarray(outer), np.asarray(expected), rtol=1e-5, atol=1e-9)
    per_shard = jax.jit(jax.shard_map(jax.grad(local), mesh=mesh, in_specs=specs,
                                      out_specs=P(None, "data"), check_vma=True))(probs, idx)
    np.testing.assert_allclose(np.asarray(per_shard), np.asarray(expected), rtol=1e-5,
                               atol=1e-9)
    # the per-shard (micro-batch) loss differs: the variant really changes the value
    first_shard = load_balance_loss(probs[:, :5], idx[:, :5], num_experts=num_e)[0]
    assert abs(float(first_shard) - float(whole(probs))) > 1e-3
