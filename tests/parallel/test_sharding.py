"""Sharded ("pjit") training equals single-device training; sharding rules and their errors."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from moejax.models.decoder import Decoder, decoder_spec_from_config
from moejax.moe.router import RouterBias
from moejax.parallel import (
    MeshSpec,
    batch_sharding,
    make_expert_parallel,
    make_mesh,
    shard_model_and_optimizer,
    state_shardings,
)
from moejax.regularizers import LossSpec
from moejax.train import step
from moejax.train.config_files import load_config
from moejax.train.specs import specs_from_config

SPEC = {"vocab_size": 32, "d_model": 16, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2,
        "d_ff": 24, "moe": {"num_experts": 8, "top_k": 2, "d_hidden": 8, "engine": "capacity",
                            "capacity_factor": 2.0, "record_cosine": True}}
LOSSES = LossSpec(lb=1e-2, z=1e-3, sp=2e-3, cp=1e-3)


BIASED = dict(SPEC, moe=dict(SPEC["moe"], router={"use_bias": True}))
BIAS_LOSSES = LossSpec(lb=1e-2, lb_variant="global", z=1e-3, sp=2e-3, cp=1e-3, bias_rate=1e-2)


def _train(mesh, steps=3, expert_parallel="none", spec=SPEC, losses=LOSSES):
    engine = make_expert_parallel(expert_parallel, mesh) if mesh is not None else None
    model = Decoder(decoder_spec_from_config(spec), rngs=nnx.Rngs(0), engine=engine)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 32, (8, 9)), jnp.int32)
    if mesh is not None:
        shard_model_and_optimizer(model, optimizer, mesh)
        tokens = jax.device_put(tokens, batch_sharding(mesh))
    totals = [float(step.train_step(model, optimizer, tokens, losses)["total_loss"])
              for _ in range(steps)]
    return totals, nnx.state(model, (nnx.Param, RouterBias))


@pytest.mark.parametrize("mesh_spec", [
    MeshSpec(data=1, expert=8),
    MeshSpec(data=2, expert=4),
    MeshSpec(data=1, fsdp=2, expert=2, tensor=2),
])
def test_three_sharded_steps_equal_single_device(mesh_spec):
    mesh = make_mesh(mesh_spec)
    want_losses, want = _train(None)
    got_losses, got = _train(mesh)
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)
    experts = nnx.state(Decoder(decoder_spec_from_config(SPEC), rngs=nnx.Rngs(0)))
    shardings = state_shardings(experts, mesh)
    w_gate = shardings["stacks"][0]["layers"][0]["ffn"]["block"]["experts"]["w_gate"]
    w_gate = w_gate.get_value() if isinstance(w_gate, nnx.Variable) else w_gate
    assert tuple(w_gate.spec)[:2] == (None, "expert")  # [L, E, D, F]: depth unsharded


@pytest.mark.parametrize("mesh_spec, mode", [
    (MeshSpec(data=2, expert=4), "all_to_all"),
    (MeshSpec(data=1, fsdp=2, expert=2, tensor=2), "ring"),
])
def test_three_expert_parallel_steps_equal_single_device(mesh_spec, mode):
    """Global-batch load balance and the aux-loss-free bias update included."""
    want_losses, want = _train(None, spec=BIASED, losses=BIAS_LOSSES)
    got_losses, got = _train(make_mesh(mesh_spec), expert_parallel=mode, spec=BIASED,
                             losses=BIAS_LOSSES)
    biases = [b for b in jax.tree.leaves(nnx.state(want)) if b.shape[-1:] == (8,)]  # [(L,) E]
    assert biases and any(np.abs(np.asarray(b)).max() > 0 for b in biases)
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)


def test_expert_axis_that_does_not_divide_experts_is_an_error():
    mesh = make_mesh(MeshSpec(data=2, expert=4))
    spec = dict(SPEC, moe=dict(SPEC["moe"], num_experts=6))
    model = Decoder(decoder_spec_from_config(spec), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"^model\.moe\.num_experts x model\.moe\.granularity "
                                         r"= 6 is not divisible by mesh\.expert=4: .*experts/w_"):
        state_shardings(nnx.state(model), mesh)


def test_every_parameter_of_tiny_gets_a_sharding():
    """configs/tiny.py has a rule for every parameter (an unknown one would raise)."""
    config = load_config(pathlib.Path(__file__).resolve().parents[2] / "configs" / "tiny.py")
    model_spec = specs_from_config(config).model
    model = nnx.eval_shape(lambda: Decoder(model_spec, rngs=nnx.Rngs(0)))
    mesh = make_mesh(MeshSpec(data=4, expert=2))
    shardings = state_shardings(nnx.state(model, nnx.Param), mesh)
    leaves = jax.tree.leaves(shardings)
    assert leaves and all(s.mesh is mesh for s in leaves)


# The documented rules (parallel/axes.py, README "Parallelism"), written out per parameter
# kind, by its path in the model or in one layer: fsdp on the model width D, tensor on heads,
# vocabulary and hidden widths, expert on E; norms, biases and RNG state unsharded.
OUTER_SPECS = {
    "embed/embedding": ("tensor", "fsdp"),                 # [V, D]
    "head/kernel": ("fsdp", "tensor"),                     # [D, V]
    "final_norm/weight": (None,),                          # [D]
}
ATTENTION_SPECS = {
    "attn_norm/weight": (None,),                           # [D]
    "attn/w_q": ("fsdp", "tensor", None),                  # [D, N, H]
    "attn/w_k": ("fsdp", "tensor", None),                  # [D, K, H]
    "attn/w_v": ("fsdp", "tensor", None),
    "attn/w_o": ("tensor", None, "fsdp"),                  # [N, H, D]
}
QK_NORM_SPECS = {"attn/q_norm/weight": (None,), "attn/k_norm/weight": (None,)}  # [H]


def _swiglu_specs(prefix):
    """A dense SwiGLU (dense FFN layer, shared experts): [D, F], [D, F], [F, D]."""
    return {f"{prefix}/w_gate": ("fsdp", "tensor"), f"{prefix}/w_up": ("fsdp", "tensor"),
            f"{prefix}/w_down": ("tensor", "fsdp")}


def _routed_specs(prefix):
    """Routed experts [E, D, F], [E, F, D]; router [D, E], bias [E], jitter RNG (scalars)."""
    return {f"{prefix}/experts/w_gate": ("expert", "fsdp", "tensor"),
            f"{prefix}/experts/w_up": ("expert", "fsdp", "tensor"),
            f"{prefix}/experts/w_down": ("expert", "tensor", "fsdp"),
            f"{prefix}/router/kernel": ("fsdp", None),
            f"{prefix}/router/bias": (None,),
            f"{prefix}/router/rngs/jitter/key": (),
            f"{prefix}/router/rngs/jitter/count": ()}


def _cartesian_specs(sub):
    """One CartesianMoE sub-layer: its norm, routed experts and shared experts with the
    learned mix [D, 2] + [2]."""
    prefix = f"ffn/block/{sub}"
    return {f"{prefix}/norm/weight": (None,), **_routed_specs(f"{prefix}/routed"),
            **_swiglu_specs(f"{prefix}/shared/ffn"),
            f"{prefix}/shared/mix_kernel": ("fsdp", None), f"{prefix}/shared/mix_bias": (None,)}


FFN_SPECS = {
    "dense": {"ffn/norm/weight": (None,), **_swiglu_specs("ffn/ffn")},
    "topk": {"ffn/norm/weight": (None,), **_routed_specs("ffn/block")},
    "deepseek": {"ffn/norm/weight": (None,), **_routed_specs("ffn/block/routed"),
                 **_swiglu_specs("ffn/block/shared/ffn")},
    "cartesian": {**_cartesian_specs("sub_a"), **_cartesian_specs("sub_b")},
}
# every parameter kind: a dense first layer, q/k norms, router bias and jitter, shared experts
# (DeepSeekMoE: summed, fine-grained; CartesianMoE: the softmax mix)
EVERY_KIND = dict(SPEC, num_layers=3, first_dense_layers=1, qk_norm=True,
                  moe=dict(SPEC["moe"], num_shared_experts=1,
                           router={"use_bias": True, "jitter": 0.1}))
BLOCK_OPTIONS = {"topk": {}, "deepseek": {"granularity": 2}, "cartesian": {"shared_mix": "softmax"}}


def _names(path):
    names = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    return [n for n in names if n != "value"]


def _kind(names):
    """(path within the model or one layer, stacked): drops `stacks/s/layers/j` or
    `layers/i`."""
    if names[0] == "stacks":
        return "/".join(names[4:]), True
    return "/".join(names[2:] if names[0] == "layers" else names), False


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("block", ["topk", "deepseek", "cartesian"])
def test_every_parameter_kind_of_every_block_gets_its_documented_spec(block, scan_layers):
    """From shapes alone (nnx.eval_shape): each leaf's PartitionSpec on an (fsdp, expert,
    tensor) mesh of 8 devices is the table's, with an unsharded depth axis when scanned, and
    the model has exactly the table's parameter kinds."""
    moe = dict(EVERY_KIND["moe"], **BLOCK_OPTIONS[block])
    spec = decoder_spec_from_config(dict(EVERY_KIND, block=block, scan_layers=scan_layers,
                                         moe=moe))
    model = nnx.eval_shape(lambda: Decoder(spec, rngs=nnx.Rngs(0)))
    mesh = make_mesh(MeshSpec(data=1, fsdp=2, expert=2, tensor=2))
    want = {**OUTER_SPECS, **ATTENTION_SPECS, **QK_NORM_SPECS, **FFN_SPECS["dense"],
            **FFN_SPECS[block]}
    seen = set()
    for path, sharding in jax.tree_util.tree_leaves_with_path(
            state_shardings(nnx.state(model), mesh)):
        kind, stacked = _kind(_names(path))
        assert tuple(sharding.spec) == (None,) * stacked + want[kind], kind
        seen.add(kind)
    assert seen == set(want)


MLA = {"kv_lora_rank": 8, "qk_nope_head_dim": 4, "qk_rope_head_dim": 4, "v_head_dim": 6}
# the other attention kinds: q/k/v biases with q/k norms over the whole projection (Qwen2-MoE,
# OLMoE), and MLA with and without the query's low rank (DeepSeek-V3, V2-Lite)
ATTENTION_KINDS = {
    "gqa_bias": ({"qkv_bias": True, "qk_norm": True, "qk_norm_axes": "all"},
                 {**ATTENTION_SPECS, **QK_NORM_SPECS, "attn/b_q": ("tensor", None),
                  "attn/b_k": ("tensor", None), "attn/b_v": ("tensor", None)}),
    "mla_q_lora": ({"mla": {**MLA, "q_lora_rank": 6}},
                   {"attn_norm/weight": (None,), "attn/w_q_a": ("fsdp", None),
                    "attn/q_a_norm/weight": (None,), "attn/w_q_b": (None, "tensor", None),
                    "attn/w_kv_a": ("fsdp", None), "attn/kv_a_norm/weight": (None,),
                    "attn/w_kv_b": (None, "tensor", None), "attn/w_o": ("tensor", None, "fsdp")}),
    "mla": ({"mla": MLA},
            {"attn_norm/weight": (None,), "attn/w_q": ("fsdp", "tensor", None),
             "attn/w_kv_a": ("fsdp", None), "attn/kv_a_norm/weight": (None,),
             "attn/w_kv_b": (None, "tensor", None), "attn/w_o": ("tensor", None, "fsdp")}),
}


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_every_attention_parameter_gets_its_documented_spec(kind):
    options, attention = ATTENTION_KINDS[kind]
    spec = decoder_spec_from_config(dict(EVERY_KIND, num_layers=2, first_dense_layers=0,
                                         **{"qk_norm": False, **options}))
    model = nnx.eval_shape(lambda: Decoder(spec, rngs=nnx.Rngs(0)))
    mesh = make_mesh(MeshSpec(data=1, fsdp=2, expert=2, tensor=2))
    want = {**OUTER_SPECS, **attention, **FFN_SPECS[spec.block]}
    seen = set()
    for path, sharding in jax.tree_util.tree_leaves_with_path(
            state_shardings(nnx.state(model), mesh)):
        kind_path, stacked = _kind(_names(path))
        assert tuple(sharding.spec) == (None,) * stacked + want[kind_path], kind_path
        seen.add(kind_path)
    assert seen == set(want)


def test_a_parameter_the_rules_do_not_know_is_an_error_naming_it():
    """An unknown name, or a known name of another rank, is a ValueError naming the
    parameter, not silent replication."""
    mesh = make_mesh(MeshSpec(data=1, fsdp=2, expert=2, tensor=2))
    spec = decoder_spec_from_config(dict(SPEC, scan_layers=False))
    model = nnx.eval_shape(lambda: Decoder(spec, rngs=nnx.Rngs(0)))
    model.layers[1].attn.w_extra = nnx.Param(jnp.zeros((16, 2), jnp.float32))
    with pytest.raises(ValueError, match=r"^parameter layers/1/attn/w_extra \(rank 2 in one "
                                         r"layer\) has no sharding rule; allowed: embedding "):
        state_shardings(nnx.state(model), mesh)
    stacked_w_q = {"stacks": {0: {"layers": {0: {"attn": {
        "w_q": jax.ShapeDtypeStruct((2, 16, 8), jnp.float32)}}}}}}  # [L, D, H]: no heads axis
    with pytest.raises(ValueError, match=r"^parameter stacks/0/layers/0/attn/w_q \(rank 2 "):
        state_shardings(stacked_w_q, mesh)


def _placed_spec(leaf):
    sharding = leaf.sharding
    assert isinstance(sharding, jax.sharding.NamedSharding), sharding
    spec = tuple(sharding.spec)
    return spec + (None,) * (leaf.ndim - len(spec))


def test_parameters_and_moments_are_placed_by_the_rules():
    """Every parameter and both Adam moments of it, as placed on a (fsdp, expert, tensor) mesh,
    and the batch over (data, fsdp, expert)."""
    mesh = make_mesh(MeshSpec(data=1, fsdp=2, expert=2, tensor=2))
    model = Decoder(decoder_spec_from_config(SPEC), rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)
    shard_model_and_optimizer(model, optimizer, mesh)
    params = jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
    specs = {**OUTER_SPECS, **ATTENTION_SPECS, **FFN_SPECS["topk"]}
    want = {}
    for path, leaf in params:
        names = tuple(_names(path))
        kind, stacked = _kind(names)
        want[names] = (None,) * stacked + specs[kind]  # a scanned stack's leading [L] axis
        assert _placed_spec(leaf) == want[names], names
    assert any("stacks" in names for names in want)
    moments = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(optimizer)):
        names = tuple(_names(path))
        for moment in ("mu", "nu"):
            if moment in names:
                param = names[names.index(moment) + 1:]
                assert _placed_spec(leaf) == want[param], names
                moments += 1
    assert moments == 2 * len(params)
    tokens = jax.device_put(jnp.zeros((8, 9), jnp.int32), batch_sharding(mesh))
    assert tuple(tokens.sharding.spec)[0] == ("data", "fsdp", "expert")


def test_state_initialised_in_its_shardings_equals_the_eager_build():
    """The trainer's init (one jit with out_shardings, `train/state.py`) gives the eager
    build's values, every leaf already on its rule's sharding, the optimizer's too."""
    from moejax.train.specs import TrainSpec
    from moejax.train.state import model_and_optimizer, sharded_model_and_optimizer

    mesh = make_mesh(MeshSpec(data=1, fsdp=2, expert=2, tensor=2))
    model_spec = decoder_spec_from_config(SPEC)
    got = nnx.state(sharded_model_and_optimizer(model_spec, TrainSpec(), 3, mesh))
    want = nnx.state(model_and_optimizer(model_spec, TrainSpec(), 3))
    shardings = state_shardings(want, mesh)
    leaves = jax.tree.leaves(got)
    assert len(leaves) == len(jax.tree.leaves(want)) > 20
    for g, w, s in zip(leaves, jax.tree.leaves(want), jax.tree.leaves(shardings), strict=True):
        assert g.sharding == s
        if jnp.issubdtype(g.dtype, jax.dtypes.prng_key):
            g, w = jax.random.key_data(g), jax.random.key_data(w)
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-7)
    assert any(s.spec[:2] == (None, "expert") for s in jax.tree.leaves(shardings))
