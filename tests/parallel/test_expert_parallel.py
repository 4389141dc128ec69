"""Expert-parallel engines on 8 CPU devices equal the single-device engines.

Two stacked top-k blocks (so the coupling loss has two routers) run once with the plain
engine and once under each expert-parallel mode on three meshes; outputs, routing records,
every loss and the gradients must match (float32, rtol 1e-5). A tight capacity gives the same
dropped counts; a tight pair capacity drops exactly the slots a NumPy count says.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.moe.spec import MoESpec
from moejax.moe.topk import TopKMoE
from moejax.parallel import MeshSpec, make_mesh
from moejax.parallel.expert_parallel import ExpertParallel, make_expert_parallel
from moejax.record import concat_records
from moejax.regularizers import LossSpec, aux_total

D_MODEL, TOKENS = 16, 64
LOSSES = LossSpec(lb=1e-2, lb_variant="global", z=1e-3, sp=2e-2, cp=1e-2)
MESHES = {
    "expert8": MeshSpec(data=1, expert=8),
    "data2_expert4": MeshSpec(data=2, expert=4),
    "fsdp2_expert2_tensor2": MeshSpec(data=1, fsdp=2, expert=2, tensor=2),
}
MODES = {"all_to_all": "capacity", "ring": "dropless", "ragged": "dropless"}


class TwoBlocks(nnx.Module):
    def __init__(self, spec: MoESpec, engine):
        self.first = TopKMoE(D_MODEL, spec, rngs=nnx.Rngs(0), engine=engine)
        self.second = TopKMoE(D_MODEL, spec, rngs=nnx.Rngs(1), engine=engine)

    def __call__(self, x):
        h, record_a = self.first(x)
        y, record_b = self.second(x + h)
        return y, concat_records([record_a, record_b])


def _run(spec: MoESpec, engine, x):
    """(y, record, loss terms, grads wrt params and x) of the two blocks, jitted."""
    graphdef, params = nnx.split(TwoBlocks(spec, engine))
    probe = jnp.asarray(np.random.default_rng(2).normal(size=x.shape), jnp.float32)

    def loss(params, x):
        y, record = nnx.merge(graphdef, params)(x)
        total, terms = aux_total(record, LOSSES)
        return jnp.sum(y * probe) + total, (y, record, terms)

    (_, (y, record, terms)), grads = jax.jit(
        jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
    return y, record, terms, grads


def _tokens():
    return jnp.asarray(np.random.default_rng(1).normal(size=(TOKENS, D_MODEL)), jnp.float32)


def _assert_trees_close(got, want):
    """rtol 1e-5, elementwise or relative to the array's largest entry (summation order
    differs between one device and the shards: an entry near zero in a gradient summed
    over tokens carries the rounding of the large ones)."""
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        w = np.asarray(w)
        scale = float(np.max(np.abs(w))) if w.size and w.dtype.kind == "f" else 0.0
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-5 * scale + 1e-7)


def _engine(mode, mesh_name, **kwargs):
    emulate = mode == "ragged"
    return ExpertParallel(make_mesh(MESHES[mesh_name]), mode, emulate_ragged=emulate, **kwargs)


@pytest.mark.parametrize("mesh_name", list(MESHES))
@pytest.mark.parametrize("mode", list(MODES))
def test_mode_equals_single_device(mode, mesh_name):
    spec = MoESpec(num_experts=8, top_k=2, d_hidden=8, engine=MODES[mode], capacity_factor=1.0,
                   record_cosine=True)
    want = _run(spec, None, _tokens())
    got = _run(spec, _engine(mode, mesh_name), _tokens())
    _assert_trees_close(got, want)
    assert set(got[2]) == set(want[2]) and len(got[2]) > 5  # every loss term compared


@pytest.mark.parametrize("mode", ["all_to_all", "ring"])
def test_tight_capacity_drops_equal_single_device(mode):
    spec = MoESpec(num_experts=8, top_k=2, d_hidden=8, engine="capacity", capacity_factor=0.5,
                   record_cosine=True)
    want = _run(spec, None, _tokens())
    got = _run(spec, _engine(mode, "data2_expert4"), _tokens())
    assert int(want[1].dropped.sum()) > 0
    np.testing.assert_array_equal(got[1].dropped, want[1].dropped)
    _assert_trees_close(got, want)


def _pair_overflow_reference(expert_idx, kept, num_blocks, num_shards, pair_rows):
    """NumPy loop: kept slots past the first pair_rows of each (token block, destination)."""
    expert_idx, kept = np.asarray(expert_idx), np.asarray(kept)
    tokens, top_k = expert_idx.shape
    per_block, num_local = tokens // num_blocks, 8 // num_shards
    still_kept = kept.copy()
    for block in range(num_blocks):
        used = np.zeros(num_shards, int)
        for t in range(block * per_block, (block + 1) * per_block):
            for j in range(top_k):
                if kept[t, j]:
                    destination = expert_idx[t, j] // num_local
                    still_kept[t, j] = used[destination] < pair_rows
                    used[destination] += 1
    return still_kept


def test_tight_pair_capacity_drops_are_counted():
    spec = MoESpec(num_experts=8, top_k=2, d_hidden=8, engine="capacity", capacity_factor=2.0,
                   record_cosine=True)
    engine = _engine("all_to_all", "expert8", pair_capacity_factor=0.5)
    base = _run(spec, None, _tokens())
    y, record, _, _ = _run(spec, engine, _tokens())
    # layer 1 sees the same input in both runs: its plan differs only by the pair drops
    want_kept = _pair_overflow_reference(base[1].expert_idx[0], base[1].kept[0],
                                         num_blocks=8, num_shards=8, pair_rows=1)
    np.testing.assert_array_equal(record.kept[0], want_kept)
    assert int(record.dropped[0]) == int((~want_kept).sum()) > int(base[1].dropped[0])
    assert np.all(np.asarray(record.gates[0])[~want_kept] == 0)


def test_ragged_is_a_clear_error_on_cpu():
    with pytest.raises(ValueError, match="'all_to_all'.*'ring'"):
        make_expert_parallel("ragged", make_mesh(MESHES["expert8"]))


@pytest.mark.parametrize("mode, engine, message", [
    ("all_to_all", "dropless", "needs moe.engine='capacity'"),
    ("ring", "dropless", "not divisible by mesh.expert=8"),
])
def test_bad_combinations_are_clear_errors(mode, engine, message):
    experts = 8 if mode == "all_to_all" else 12
    spec = MoESpec(num_experts=experts, top_k=2, d_hidden=8, engine=engine, record_cosine=True)
    with pytest.raises(ValueError, match=message):
        _run(spec, _engine(mode, "expert8"), _tokens())


def test_all_to_all_without_capacity_engine_is_an_error_at_construction():
    with pytest.raises(ValueError, match="needs moe.engine='capacity', not 'dropless'"):
        make_expert_parallel("all_to_all", make_mesh(MESHES["expert8"]), moe_engine="dropless")


def test_unknown_mode_names_the_options():
    with pytest.raises(ValueError, match="allowed: none, all_to_all, ring, ragged"):
        make_expert_parallel("alltoall", make_mesh(MESHES["expert8"]))
