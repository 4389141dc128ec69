"""The fused kernels in the blocks: implementation="pallas" (interpret mode) equals
"jnp".

Covers the router's fused top-k dispatch (plan positions without an argsort) and the
pairwise cosine read from the engines' expert-sorted layout, for every engine: outputs,
routing records and gradients agree.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moejax.kernels import topk_dispatch
from moejax.models.decoder import decoder_spec_from_config
from moejax.moe.dispatch import make_plan
from moejax.moe.spec import MoESpec
from moejax.moe.topk import TopKMoE

D_MODEL, TOKENS = 16, 40


def _run(engine: str, implementation: str):
    spec = MoESpec(num_experts=8, top_k=2, d_hidden=8, engine=engine, capacity_factor=0.75,
                   record_cosine=True, implementation=implementation)
    graphdef, params = nnx.split(TopKMoE(D_MODEL, spec, rngs=nnx.Rngs(0)))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(TOKENS, D_MODEL)), jnp.float32)
    probe = jnp.asarray(np.random.default_rng(2).normal(size=x.shape), jnp.float32)

    def loss(params, x):
        y, record = nnx.merge(graphdef, params)(x)
        sp = jnp.sum(jnp.square(record.pair_cos))
        return jnp.sum(y * probe) + sp + jnp.sum(record.probs * probe[:, :8]), (y, record)

    step = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    kernels_ran = str(jax.make_jaxpr(step)(params, x)).count("pallas_call")
    (_, (y, record)), grads = jax.jit(step)(params, x)
    return y, record, grads, kernels_ran


@pytest.mark.parametrize("engine", ["dense", "capacity", "dropless"])
def test_pallas_kernels_equal_jnp_in_every_engine(engine):
    *want, jnp_kernels = _run(engine, "jnp")
    *got, pallas_kernels = _run(engine, "pallas")
    # the fused top-k dispatch and the cosine kernel, forward and backward, ran as Pallas
    assert jnp_kernels == 0 and pallas_kernels >= 3, (jnp_kernels, pallas_kernels)
    if engine == "capacity":  # capacity factor 0.75: the plan drops slots
        assert int(want[1].dropped.sum()) > 0
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        w = np.asarray(w)
        atol = 1e-5 * float(np.abs(w).max()) if w.size and w.dtype.kind == "f" else 0
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=atol + 1e-7)


def test_plan_from_the_fused_kernel_equals_the_argsort_plan():
    logits = jnp.asarray(np.random.default_rng(3).normal(size=(TOKENS, 6)), jnp.float32)
    logits = logits.at[5].set(logits[4])  # a repeated row: ties between tokens
    fused = topk_dispatch(logits, 3, implementation="pallas")
    for capacity in (None, 12):
        want = make_plan(fused.expert_idx, 6, capacity)
        got = make_plan(fused.expert_idx, 6, capacity, fused)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(g, w)


def test_unknown_implementation_names_the_options():
    with pytest.raises(ValueError,
                       match="moe.implementation='triton'; allowed: auto, pallas, jnp"):
        MoESpec(implementation="triton")


def test_old_kernel_option_names_its_new_name():
    config = {"moe": {"kernel": "jnp"}}
    with pytest.raises(ValueError,
                       match=r"^model.moe.kernel was renamed model.moe.implementation$"):
        decoder_spec_from_config(config)


@pytest.mark.parametrize("engine", ["dense", "capacity", "dropless"])
def test_cosine_of_a_token_subset_equals_the_full_cosine_there(engine):
    """cosine_max_tokens reads only the subset's activations: the values and gradients of the
    full record's cosines at those tokens."""
    subset = np.asarray((np.arange(9) * TOKENS) // 9)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(TOKENS, D_MODEL)), jnp.float32)
    results = []
    for max_tokens in (None, 9):
        spec = MoESpec(num_experts=8, top_k=2, d_hidden=8, engine=engine, capacity_factor=0.75,
                       record_cosine=True, cosine_max_tokens=max_tokens)
        graphdef, params = nnx.split(TopKMoE(D_MODEL, spec, rngs=nnx.Rngs(0)))

        def penalty(params, x):
            cos = nnx.merge(graphdef, params)(x)[1].pair_cos[0]
            return jnp.sum(jnp.square(cos if max_tokens else cos[subset])), cos

        results.append(jax.value_and_grad(penalty, argnums=(0, 1), has_aux=True)(params, x))
    (full_value, full_cos), full_grads = results[0]
    (value, cos), grads = results[1]
    assert cos.shape == (9, 2, 2)
    np.testing.assert_allclose(cos, full_cos[subset], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(value, full_value, rtol=1e-6)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(full_grads), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
