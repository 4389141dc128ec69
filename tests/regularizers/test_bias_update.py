"""moejax/regularizers/bias_update.py against the float64 NumPy oracle
(docs/methods.md section 2)."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from moejax.regularizers import updated_bias
from tests.regularizers.reference_losses import updated_bias as bias_ref
from tests.regularizers.regularizer_inputs import NUM_DEVICES, PADDED_SHAPES, R, data_mesh

RATE = 1e-3
E = 6


def _random(seed, shape, high=20):
    rng = np.random.default_rng(seed)
    bias = rng.normal(size=shape).astype(np.float32) * 0.01
    load = rng.integers(0, high, size=shape).astype(np.int32)
    return bias, load


def test_matches_reference_stacked_and_single():
    bias, load = _random(60, (R, E))
    new = updated_bias(jnp.asarray(bias), jnp.asarray(load), RATE)
    np.testing.assert_allclose(np.asarray(new), np.stack(bias_ref(bias, load, RATE)),
                               rtol=1e-6, atol=1e-9)
    single = updated_bias(jnp.asarray(bias[0]), jnp.asarray(load[0]), RATE)
    assert single.shape == (E,)
    np.testing.assert_allclose(np.asarray(single), bias_ref(bias[:1], load[:1], RATE)[0],
                               rtol=1e-6, atol=1e-9)


def test_padded_routers_match_reference_and_padding_stays_put():
    bias, load = _random(61, (R, E))
    true_e = np.array([e for e, _ in PADDED_SHAPES], np.int32)
    for r, e in enumerate(true_e):
        load[r, e:] = 0  # padded experts get no tokens
    new = np.asarray(updated_bias(jnp.asarray(bias), jnp.asarray(load), RATE,
                                  num_experts=jnp.asarray(true_e)))
    expected = bias_ref([bias[r, :e] for r, e in enumerate(true_e)],
                        [load[r, :e] for r, e in enumerate(true_e)], RATE)
    for r, e in enumerate(true_e):
        np.testing.assert_allclose(new[r, :e], expected[r], rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(new[r, e:], bias[r, e:])


def test_direction_of_the_update():
    bias = jnp.zeros((E,), jnp.float32)
    load = jnp.asarray([10, 2, 6, 6, 0, 12], jnp.int32)  # mean 6
    new = np.asarray(updated_bias(bias, load, RATE))
    np.testing.assert_allclose(new, RATE * np.array([-1, 1, 0, 0, 1, -1]), rtol=1e-6)
    balanced = updated_bias(bias + 0.5, jnp.full((E,), 7, jnp.int32), RATE)
    np.testing.assert_array_equal(np.asarray(balanced), np.full(E, 0.5, np.float32))


def test_global_loads_over_data_shards():
    """Each shard sees only its local loads; the update uses their sum and agrees on all shards."""
    rng = np.random.default_rng(62)
    bias = jnp.asarray(rng.normal(size=(R, E)).astype(np.float32) * 0.01)
    local = rng.integers(0, 5, size=(NUM_DEVICES, R, E)).astype(np.int32)
    expected = updated_bias(bias, jnp.asarray(local.sum(0)), RATE)

    def step(b, load):
        return updated_bias(b, load[0], RATE, axis_name="data")[None]

    out = jax.jit(jax.shard_map(step, mesh=data_mesh(), in_specs=(P(), P("data")),
                                out_specs=P("data"), check_vma=True))(bias, jnp.asarray(local))
    out = np.asarray(out)
    for shard in range(NUM_DEVICES):
        np.testing.assert_array_equal(out[shard], np.asarray(expected))
    shard_only = np.asarray(updated_bias(bias, jnp.asarray(local[3]), RATE))
    assert not np.array_equal(shard_only, np.asarray(expected))
