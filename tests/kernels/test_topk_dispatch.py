"""topk_dispatch (Pallas in interpret mode, and jnp) against a NumPy float64 loop.

Logits are multiples of 1/4 in [-2, 2): many exact ties (broken towards the lowest index, as
jax.lax.top_k does) and exact in bfloat16, so float32 and float64 pick the same experts.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.test_util import check_grads

from moejax.kernels import KERNEL_IMPLEMENTATIONS, TopKDispatch, topk_dispatch
from moejax.kernels.topk_dispatch import _Config, _topk_blocks
from tests.kernels.platforms import requires_gpu, skip_unless_triton_lowering_runs_here

PALLAS = dict(implementation="pallas", interpret=True)
INT_MIN = np.iinfo(np.int32).min


def _loop_reference(logits: np.ndarray, k: int, normalize: bool) -> dict:
    """Softmax, top-k (lowest index first among equals), counts and positions, by loops."""
    x = np.asarray(logits, np.float64)
    tokens, experts = x.shape
    probs = np.zeros((tokens, experts))
    gates = np.zeros((tokens, k))
    idx = np.zeros((tokens, k), np.int64)
    for t in range(tokens):
        e = np.exp(x[t] - x[t].max())
        probs[t] = e / e.sum()
        order = sorted(range(experts), key=lambda expert: (-probs[t, expert], expert))[:k]
        idx[t] = order
        gates[t] = probs[t, order]
        if normalize:
            gates[t] /= gates[t].sum()
    counts = np.zeros(experts, np.int64)
    position = np.zeros((tokens, k), np.int64)
    for t in range(tokens):  # slot order t*k + j
        for j in range(k):
            position[t, j] = counts[idx[t, j]]
            counts[idx[t, j]] += 1
    start = np.cumsum(counts) - counts
    return dict(gates=gates, expert_idx=idx, tokens_per_expert=counts,
                position_in_expert=position, expert_sorted_index=start[idx] + position,
                probs=probs)


def _tied_logits(tokens: int, experts: int, seed: int, dtype) -> jax.Array:
    values = np.random.default_rng(seed).integers(-8, 8, size=(tokens, experts)) / 4
    return jnp.asarray(values, dtype)


def _assert_matches(out: TopKDispatch, want: dict, k: int) -> None:
    tokens = want["gates"].shape[0]
    for name in ("expert_idx", "tokens_per_expert", "position_in_expert", "expert_sorted_index"):
        got = getattr(out, name)
        assert got.dtype == jnp.int32, name
        np.testing.assert_array_equal(np.asarray(got), want[name], err_msg=name)
    assert out.gates.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out.gates), want["gates"], rtol=2e-6, atol=1e-7)
    assert sorted(np.asarray(out.expert_sorted_index).ravel()) == list(range(tokens * k))
    if out.probs is not None:
        np.testing.assert_allclose(np.asarray(out.probs), want["probs"], rtol=2e-6, atol=1e-7)


CASES = [  # (T, E, k, block_tokens, dtype, normalize): T never a multiple of the block
    (37, 6, 2, 16, jnp.float32, True),
    (37, 6, 6, 16, jnp.bfloat16, True),  # k = E
    (37, 64, 8, 16, jnp.bfloat16, False),
    (100, 160, 4, 32, jnp.float32, True),
    (100, 64, 1, 64, jnp.float32, False),
    (37, 160, 2, 16, jnp.bfloat16, True),
]


@pytest.mark.parametrize("tokens,experts,k,block,dtype,normalize", CASES)
def test_matches_loop(tokens, experts, k, block, dtype, normalize):
    logits = _tied_logits(tokens, experts, seed=tokens + experts + k, dtype=dtype)
    want = _loop_reference(np.asarray(logits.astype(jnp.float32)), k, normalize)
    options = dict(normalize=normalize, return_probs=normalize)
    pallas = jax.jit(functools.partial(topk_dispatch, k=k, block_tokens=block, **options,
                                       **PALLAS))
    _assert_matches(pallas(logits), want, k)
    _assert_matches(topk_dispatch(logits, k, implementation="jnp", **options), want, k)


def test_interpreter_poisons_unwritten_outputs():
    """Interpret mode starts every output as NaN / INT_MIN: the kernel tests below rely on it."""

    def writes_nothing(x_ref, f_ref, i_ref):
        del x_ref, f_ref, i_ref

    f, i = pl.pallas_call(
        writes_nothing, interpret=True,
        out_shape=(jax.ShapeDtypeStruct((8,), jnp.float32), jax.ShapeDtypeStruct((8,), jnp.int32)),
    )(jnp.zeros((8,), jnp.float32))
    assert np.isnan(np.asarray(f)).all() and (np.asarray(i) == INT_MIN).all()


def test_kernel_writes_every_output_element():
    """Raw padded kernel outputs (padding rows and columns included) hold no poison."""
    logits = _tied_logits(37, 6, seed=3, dtype=jnp.float32)
    config = _Config(top_k=3, normalize=True, return_probs=True, block_tokens=16,
                     interpret=True)
    gates, idx, rank, counts, probs = _topk_blocks(logits, config)
    assert gates.shape == (48, 4) and counts.shape == (3, 1, 16) and probs.shape == (48, 16)
    assert not np.isnan(np.asarray(gates)).any() and not np.isnan(np.asarray(probs)).any()
    for ints in (idx, rank, counts):
        assert (np.asarray(ints) != INT_MIN).all()
    assert int(np.asarray(counts).sum()) == 37 * 3  # padding rows are not counted


def _weighted_loss(logits, *, k, normalize, return_probs=True, **options):
    out = topk_dispatch(logits, k, normalize=normalize, return_probs=return_probs, **options)
    gate_weights = jnp.arange(1, k + 1, dtype=out.gates.dtype)
    loss = jnp.sum(out.gates * gate_weights)
    if return_probs:
        prob_weights = jnp.cos(jnp.arange(logits.shape[1], dtype=out.gates.dtype))
        loss = loss + jnp.sum(jnp.square(out.probs) * prob_weights)
    return loss


@pytest.mark.parametrize("normalize,return_probs", [(True, False), (False, True)])
def test_gradient_matches_jnp(normalize, return_probs):
    logits = jnp.asarray(np.random.default_rng(5).normal(size=(37, 64)), jnp.float32)
    loss = functools.partial(_weighted_loss, k=4, normalize=normalize, return_probs=return_probs)
    got = jax.jit(jax.grad(functools.partial(loss, block_tokens=16, **PALLAS)))(logits)
    want = jax.grad(functools.partial(loss, implementation="jnp"))(logits)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("normalize", [True, False])
def test_gradient_finite_differences(normalize):
    with jax.enable_x64(True):
        logits = jnp.asarray(np.random.default_rng(6).normal(size=(19, 6)))  # distinct: no ties

        def outputs(x):
            out = topk_dispatch(x, 2, normalize=normalize, return_probs=True, block_tokens=16,
                                **PALLAS)
            return out.gates, out.probs

        check_grads(outputs, (logits,), order=1, modes=["rev"])


def test_lowers_to_triton_for_gpu():
    """The GPU path lowers to a Triton custom call (compiling and running it needs a GPU)."""
    skip_unless_triton_lowering_runs_here()
    loss = functools.partial(_weighted_loss, k=3, normalize=True, implementation="pallas",
                             interpret=False)
    logits = jnp.zeros((100, 160), jnp.float32)
    for fn in (loss, jax.grad(loss)):
        text = jax.jit(fn).trace(logits).lower(lowering_platforms=("cuda",)).as_text()
        assert "__gpu$xla.gpu.triton" in text


def test_tpu_lowers_to_mosaic_and_its_interpret_mode_matches_loop(tpu_target):
    """TPU: the kernel and its gradient lower to a Mosaic custom call (compiling and running
    them needs a TPU); Pallas's TPU interpret mode gives the loop's outputs (bf16 ties, no
    renormalisation) and jnp's gradient."""
    loss = functools.partial(_weighted_loss, k=3, normalize=True, implementation="pallas",
                             interpret=False)
    for fn in (loss, jax.grad(loss)):
        text = jax.jit(fn).trace(jnp.zeros((100, 160))).lower(lowering_platforms=("tpu",))
        assert "tpu_custom_call" in text.as_text()
    on_tpu = dict(implementation="pallas", interpret=pltpu.InterpretParams(), block_tokens=16)
    logits = _tied_logits(37, 64, seed=109, dtype=jnp.bfloat16)
    want = _loop_reference(np.asarray(logits.astype(jnp.float32)), 8, False)
    _assert_matches(topk_dispatch(logits, 8, normalize=False, return_probs=True, **on_tpu),
                    want, 8)
    logits = jnp.asarray(np.random.default_rng(5).normal(size=(37, 64)), jnp.float32)
    loss = functools.partial(_weighted_loss, k=4, normalize=True)
    got = jax.grad(functools.partial(loss, **on_tpu))(logits)
    want = jax.grad(functools.partial(loss, implementation="jnp"))(logits)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)


def test_rejects_bad_arguments():
    logits = jnp.zeros((5, 4), jnp.float32)
    with pytest.raises(ValueError, match="k=5"):
        topk_dispatch(logits, 5)
    with pytest.raises(ValueError, match="k=0"):
        topk_dispatch(logits, 0)
    with pytest.raises(ValueError, match="logits must be"):
        topk_dispatch(logits[0], 1)
    with pytest.raises(ValueError, match="logits must have a floating dtype"):
        topk_dispatch(jnp.zeros((5, 4), jnp.int32), 1)
    with pytest.raises(ValueError, match="implementation='triton'; allowed: auto, pallas, jnp"):
        topk_dispatch(logits, 2, implementation="triton")
    with pytest.raises(ValueError, match="block_tokens=24"):
        topk_dispatch(logits, 2, implementation="pallas", block_tokens=24)
    assert KERNEL_IMPLEMENTATIONS == ("auto", "pallas", "jnp")


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("tokens,experts,k", [(4096, 64, 2), (1000, 160, 8), (65536, 256, 8)])
def test_gpu_kernel_matches_jnp(tokens, experts, k):
    """The compiled (Triton) kernel: outputs and gradient equal the jnp reference's."""
    logits = jax.random.normal(jax.random.key(tokens), (tokens, experts), jnp.float32)
    got = jax.jit(functools.partial(topk_dispatch, k=k, implementation="pallas"))(logits)
    want = topk_dispatch(logits, k, implementation="jnp")
    for name in TopKDispatch._fields[1:5]:
        np.testing.assert_array_equal(np.asarray(getattr(got, name)),
                                      np.asarray(getattr(want, name)), err_msg=name)
    np.testing.assert_allclose(np.asarray(got.gates), np.asarray(want.gates), rtol=1e-5)
    loss = functools.partial(_weighted_loss, k=k, normalize=True)
    grad = jax.jit(jax.grad(functools.partial(loss, implementation="pallas")))(logits)
    want_grad = jax.grad(functools.partial(loss, implementation="jnp"))(logits)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), rtol=1e-4, atol=1e-6)
