"""Engines against the oracle and against each other, values and gradients.

The dropless engine runs in both layouts: "tiled" (CPU's default; small and large tiles, so
that groups span several tiles and padding tiles are skipped) and "ragged_dot" (GPU's).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from moejax.moe.combine import combine
from moejax.moe.dispatch import capacity_for, make_plan
from moejax.moe.engines import ENGINES
from moejax.moe.experts import ExpertWeights
from moejax.moe.router import RouterSpec, route
from tests.reference import moe_ref, swiglu_ref

T, D, E, K, F = 37, 10, 6, 3, 12
VARIANTS = {
    "dense": ENGINES["dense"].run,
    "capacity": ENGINES["capacity"].run,
    "dropless_tiled": functools.partial(ENGINES["dropless"].run, grouped_matmul="tiled"),
    "dropless_tiled32": functools.partial(ENGINES["dropless"].run, grouped_matmul="tiled",
                                          tile_rows=32),
    "dropless_ragged_dot": functools.partial(ENGINES["dropless"].run,
                                             grouped_matmul="ragged_dot"),
}
ROUTED = [name for name in VARIANTS if name != "dense"]
SMALL_CAPACITY = capacity_for(T, K, E, 0.5)  # ceil(9.25) = 10 slots per expert: drops
LARGE_CAPACITY = T * K  # no expert can overflow


def _inputs(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(T, D))
    w_router = rng.normal(size=(D, E))
    w_gate = rng.normal(size=(E, D, F)) / np.sqrt(D)
    w_up = rng.normal(size=(E, D, F)) / np.sqrt(D)
    w_down = rng.normal(size=(E, F, D)) / np.sqrt(F)
    return [a.astype(dtype) for a in (x, w_router, w_gate, w_up, w_down)]


def _capacity(engine, capacity):
    """The capacity engine needs one: LARGE_CAPACITY stands for "no capacity" there."""
    return LARGE_CAPACITY if engine == "capacity" and capacity is None else capacity


def _forward(engine, x, w_router, w_gate, w_up, w_down, capacity):
    routing = route(x, w_router, RouterSpec(), K)
    plan = make_plan(routing.expert_idx, E, capacity)
    y_slots, z_slots = VARIANTS[engine](x, plan, ExpertWeights(w_gate, w_up, w_down),
                                        activations="slots")
    return combine(y_slots, routing.gates, plan.kept), y_slots, z_slots, plan


def _slots_ref(inputs, info):
    """Per-slot expert outputs [T, K, D] from the oracle's SwiGLU, zero for dropped slots."""
    x, _, w_gate, w_up, w_down = (np.asarray(a, np.float64) for a in inputs)
    y_slots = np.zeros((T, K, D))
    for t in range(T):
        for j in range(K):
            e = info["expert_idx"][t, j]
            if info["kept"][t, j]:
                y_slots[t, j] = swiglu_ref(x[t], w_gate[e], w_up[e], w_down[e])[0]
    return y_slots


@pytest.mark.parametrize("engine", sorted(VARIANTS))
@pytest.mark.parametrize("capacity", [None, SMALL_CAPACITY])
def test_engine_matches_reference(engine, capacity):
    capacity = _capacity(engine, capacity)
    inputs = _inputs()
    y, y_slots, z_slots, plan = _forward(engine, *map(jnp.asarray, inputs), capacity)
    y_ref, info = moe_ref(*inputs, top_k=K, capacity=capacity)
    np.testing.assert_allclose(np.asarray(y_slots, np.float64), _slots_ref(inputs, info),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(z_slots, np.float64), info["z"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y, np.float64), y_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(plan.kept, info["kept"])
    assert int(plan.dropped) == info["dropped"]
    assert np.all(np.asarray(y_slots)[~info["kept"]] == 0)
    assert np.all(np.asarray(z_slots)[~info["kept"]] == 0)
    if capacity == SMALL_CAPACITY:
        assert info["dropped"] > 0  # the drop path is exercised


def test_engines_agree_without_drops():
    inputs = list(map(jnp.asarray, _inputs(6)))
    outputs = {}
    for engine in VARIANTS:
        y, y_slots, z_slots, plan = _forward(engine, *inputs, _capacity(engine, None))
        if engine == "capacity":  # LARGE_CAPACITY holds every slot (the others have no capacity)
            assert int(plan.dropped) == 0
        outputs[engine] = (y, y_slots, z_slots)
    for engine in ROUTED:
        for got, want in zip(outputs[engine], outputs["dense"]):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    y_ref, _ = moe_ref(*_inputs(6), top_k=K)
    np.testing.assert_allclose(np.asarray(outputs["capacity"][0], np.float64), y_ref,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("engine", sorted(VARIANTS))
def test_engine_without_activations(engine):
    x, w_router, *weights = map(jnp.asarray, _inputs(7))
    plan = make_plan(route(x, w_router, RouterSpec(), K).expert_idx, E, SMALL_CAPACITY)
    y_slots, z_slots = VARIANTS[engine](x, plan, ExpertWeights(*weights))
    assert z_slots is None and y_slots.shape == (T, K, D) and y_slots.dtype == jnp.float32


def test_capacity_engine_needs_capacity():
    x, w_router, *weights = map(jnp.asarray, _inputs())
    plan = make_plan(route(x, w_router, RouterSpec(), K).expert_idx, E)
    with pytest.raises(ValueError, match="capacity"):
        ENGINES["capacity"].run(x, plan, ExpertWeights(*weights))


@pytest.mark.parametrize("capacity", [None, SMALL_CAPACITY])
def test_engine_gradients_match_dense(capacity):
    inputs = list(map(jnp.asarray, _inputs(1)))
    target = jnp.asarray(np.random.default_rng(2).normal(size=(T, D)).astype(np.float32))

    def grads(engine):
        def loss(*args):  # through y and z: z's cotangent joins the experts' backward
            y, _, z_slots, _ = _forward(engine, *args, _capacity(engine, capacity))
            return jnp.sum((y - target) ** 2) + jnp.sum(jnp.sin(z_slots))

        return jax.grad(loss, argnums=(0, 1, 2, 3, 4))(*inputs)

    want = grads("dense")
    for engine in ROUTED:
        got = grads(engine)
        for name, g, w in zip(("x", "w_router", "w_gate", "w_up", "w_down"), got, want):
            assert np.abs(np.asarray(w)).max() > 0, name
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=f"{engine} {name}")


@pytest.mark.parametrize("engine", sorted(VARIANTS))
def test_engine_check_grads_float64(engine):
    with jax.enable_x64(True):
        inputs = [jnp.asarray(a) for a in _inputs(3, np.float64)]
        capacity = SMALL_CAPACITY if engine == "capacity" else None

        def f(x, w_gate, w_up, w_down):
            y, _, z_slots, _ = _forward(engine, x, inputs[1], w_gate, w_up, w_down, capacity)
            return y, z_slots

        check_grads(jax.jit(f), (inputs[0], *inputs[2:]), order=1, modes=["rev"], atol=1e-5,
                    rtol=1e-5)
