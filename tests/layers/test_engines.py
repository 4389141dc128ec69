"""Engines against the oracle and against each other, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from moejax.layers.combine import combine
from moejax.layers.dispatch import capacity_for, make_plan
from moejax.layers.engines import ENGINES
from moejax.layers.experts import ExpertWeights
from moejax.layers.router import RouterSpec, route
from tests.reference import moe_ref

T, D, E, K, F = 37, 10, 6, 3, 12


def _inputs(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(T, D))
    w_router = rng.normal(size=(D, E))
    w_gate = rng.normal(size=(E, D, F)) / np.sqrt(D)
    w_up = rng.normal(size=(E, D, F)) / np.sqrt(D)
    w_down = rng.normal(size=(E, F, D)) / np.sqrt(F)
    return [a.astype(dtype) for a in (x, w_router, w_gate, w_up, w_down)]


def _forward(engine, x, w_router, w_gate, w_up, w_down, capacity):
    routing = route(x, w_router, RouterSpec(), K)
    plan = make_plan(routing.expert_idx, E, capacity)
    y_slots, z_slots = ENGINES[engine](x, plan, ExpertWeights(w_gate, w_up, w_down),
                                       with_activations=True)
    return combine(y_slots, routing.gates, plan.kept), y_slots, z_slots, plan


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("capacity_factor", [None, 0.5])
def test_engine_matches_reference(engine, capacity_factor):
    if engine == "capacity" and capacity_factor is None:
        capacity_factor = 10.0  # large enough that nothing drops
    capacity = None if capacity_factor is None else capacity_for(T, K, E, capacity_factor)
    inputs = _inputs()
    y, y_slots, z_slots, plan = _forward(engine, *map(jnp.asarray, inputs), capacity)
    y_ref, info = moe_ref(*inputs, top_k=K, capacity=capacity)
    np.testing.assert_allclose(np.asarray(y, np.float64), y_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(z_slots, np.float64), info["z"], rtol=1e-4, atol=1e-5)
    assert int(plan.dropped) == info["dropped"]
    np.testing.assert_array_equal(plan.kept, info["kept"])
    assert np.all(np.asarray(y_slots)[~info["kept"]] == 0)
    if capacity_factor == 0.5:
        assert info["dropped"] > 0


@pytest.mark.parametrize("engine", ["capacity", "dropless"])
def test_engine_gradients_match_dense(engine):
    inputs = list(map(jnp.asarray, _inputs(1)))
    capacity = capacity_for(T, K, E, 0.75) if engine == "capacity" else None
    target = jnp.asarray(np.random.default_rng(2).normal(size=(T, D)).astype(np.float32))

    def loss(name, *args):
        y = _forward(name, *args, capacity)[0]
        return jnp.sum((y - target) ** 2)

    argnums = (0, 1, 2, 3, 4)
    got = jax.grad(lambda *a: loss(engine, *a), argnums)(*inputs)
    want = jax.grad(lambda *a: loss("dense", *a), argnums)(*inputs)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_engine_check_grads_float64(engine):
    with jax.enable_x64(True):
        inputs = [jnp.asarray(a) for a in _inputs(3, np.float64)]
        capacity = capacity_for(T, K, E, 0.75) if engine == "capacity" else None

        def f(x, w_gate, w_up, w_down):
            return _forward(engine, x, inputs[1], w_gate, w_up, w_down, capacity)[0]

        check_grads(f, (inputs[0], *inputs[2:]), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)
