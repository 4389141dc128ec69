"""moejax/regularizers/total.py: LossSpec validation, aux_total against the NumPy oracle on a real
tiny decoder's routing record, and an end-to-end float64 finite-difference gradient check."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from moejax.models.decoder import Decoder, decoder_spec_from_config
from moejax.regularizers import LossSpec, aux_total
from tests.regularizers.reference_losses import coupling as cp_ref
from tests.regularizers.reference_losses import load_balance as lb_ref
from tests.regularizers.reference_losses import score_variance as var_ref
from tests.regularizers.reference_losses import specialization_from_cosine as sp_ref
from tests.regularizers.reference_losses import z_loss as z_ref
from tests.regularizers.regularizer_inputs import PADDED_SHAPES, data_mesh, random_routers

CONFIG = {"num_layers": 3, "d_model": 32, "num_heads": 2, "num_kv_heads": 1, "d_ff": 64,
          "moe": {"num_experts": 6, "top_k": 3, "d_hidden": 16, "record_cosine": True}}
BATCH, SEQ = 2, 9  # T = 18 tokens
E2E_WEIGHTS = {"lb": 1.0, "z": 0.1, "sp": 1.0, "cp": 1.0}  # large, so aux gradients matter
STEP = 3e-3  # along a unit direction: no top-k set changes, large against float32 noise


def _arrays(record):
    """Per-router float64 / int lists of an unpadded record (the decoder's routers are equal)."""
    fields = (record.logits, record.probs, record.expert_idx, record.pair_cos)
    dtypes = (np.float64, np.float64, np.int64, np.float64)
    return tuple(list(np.asarray(x, dtype)) for x, dtype in zip(fields, dtypes))


def _reference_terms(record, spec, sequence_length=None):
    """name -> (mean, per-router) of every term with a non-zero weight, from the oracle."""
    logits, probs, idx, cos = _arrays(record)
    terms = {}
    if spec.lb > 0:
        terms["lb"] = lb_ref(probs, idx, sequence_length=sequence_length
                             if spec.lb_variant == "sequence" else None)
    if spec.z > 0:
        terms["z"] = z_ref(logits)
    if spec.sp > 0:
        terms["sp"] = sp_ref(cos, mode=spec.sp_mode, max_tokens=spec.sp_max_tokens)
    if spec.orth > 0:
        terms["orth"] = sp_ref(cos, mode="square", max_tokens=spec.sp_max_tokens)
    if spec.cp > 0:
        terms["cp"] = cp_ref(probs, idx, form=spec.cp_form)
    if spec.var > 0:
        terms["var"] = var_ref(probs)
    return terms


def _check_total(total, logged, expected_terms, spec):
    assert set(logged) == {f"aux/{n}{s}" for n in expected_terms for s in ("", "/per_router")}
    for name, (mean, per_router) in expected_terms.items():
        np.testing.assert_allclose(float(logged[f"aux/{name}"]), mean, rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(np.asarray(logged[f"aux/{name}/per_router"]), per_router,
                                   rtol=1e-5, err_msg=name)
    expected = sum(getattr(spec, name) * mean for name, (mean, _) in expected_terms.items())
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)


# ----------------------------------------------------------------------------- LossSpec


@pytest.mark.parametrize("options, option_name", [
    ({"lb_variant": "token"}, "loss.lb_variant"),
    ({"sp_mode": "cube"}, "loss.sp_mode"),
    ({"cp_form": "sum"}, "loss.cp_form"),
    ({"sp": 1e-3, "orth": 1e-3}, "loss.sp and loss.orth"),
    ({"cp": -1e-3}, "loss.cp=-0.001"),
    ({"bias_rate": -1.0}, "loss.bias_rate=-1.0"),
])
def test_loss_spec_errors_name_the_option(options, option_name):
    with pytest.raises(ValueError, match=option_name):
        LossSpec(**options)


def test_needs_cosine():
    assert LossSpec(lb=1e-2).needs_cosine is None
    assert LossSpec(sp=1e-3).needs_cosine == "activation"
    assert LossSpec(orth=1e-3).needs_cosine == "output"


def test_sp_without_pair_cos_is_an_error():
    record = random_routers(80).record
    with pytest.raises(ValueError, match="loss.sp"):
        aux_total(dataclasses.replace(record, pair_cos=None), LossSpec(sp=1e-3))


def test_zero_weights_give_zero_and_no_terms():
    total, logged = aux_total(random_routers(81).record, LossSpec())
    assert float(total) == 0.0 and logged == {}


def test_padded_record_with_baselines_matches_reference():
    """Routers of different E and K: lb, z, cp, orth (record cosine read as outputs) and var."""
    routers = random_routers(82, shapes=PADDED_SHAPES)
    spec = LossSpec(lb=0.3, z=0.02, cp=0.5, orth=0.7, var=2.0, sp_max_tokens=9)
    total, logged = aux_total(routers.record, spec)
    expected = {
        "lb": lb_ref(routers.probs, routers.expert_idx),
        "z": z_ref(routers.logits),
        "cp": cp_ref(routers.probs, routers.expert_idx),
        "orth": sp_ref(routers.cos, max_tokens=9),
        "var": var_ref(routers.probs),
    }
    _check_total(total, logged, expected, spec)


def test_global_variant_over_data_shards_equals_whole_batch():
    record = random_routers(83, shapes=PADDED_SHAPES, tokens=40).record
    spec = LossSpec(lb=0.5, lb_variant="global")
    per_token = P(None, "data")
    specs = type(record)(logits=per_token, probs=per_token, expert_idx=per_token,
                         gates=per_token, kept=per_token, tokens_per_expert=P(), dropped=P(),
                         num_experts=P(), top_k=P(), pair_cos=per_token)
    sharded = jax.jit(jax.shard_map(lambda r: aux_total(r, spec, axis_name="data")[0],
                                    mesh=data_mesh(), in_specs=(specs,), out_specs=P(),
                                    check_vma=True))(record)
    whole = aux_total(record, LossSpec(lb=0.5))[0]
    np.testing.assert_allclose(float(sharded), float(whole), rtol=1e-5)


# ----------------------------------------------------------------------------- tiny decoder


@pytest.fixture(scope="module")
def decoder():
    """A tiny 3-layer decoder, float64 params, and the value, gradient and record at them."""
    spec = decoder_spec_from_config(CONFIG)
    rng = np.random.default_rng(84)
    tokens = rng.integers(0, spec.vocab_size, (BATCH, SEQ)).astype(np.int32)
    targets = rng.integers(0, spec.vocab_size, (BATCH, SEQ)).astype(np.int32)
    loss_spec = LossSpec(**E2E_WEIGHTS)
    # x64 makes jnp.arange int64 next to the records' int32 fields: standard promotion here
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
        model = nnx.jit(lambda: Decoder(spec, rngs=nnx.Rngs(0)))()  # one compile, not per op
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)

        def loss(p):
            logits, record = nnx.merge(graphdef, p, rest)(jnp.asarray(tokens))
            log_probs = jax.nn.log_softmax(logits.astype(jnp.float64), -1)
            lm = -jnp.take_along_axis(log_probs, jnp.asarray(targets)[..., None], -1).mean()
            aux, _ = aux_total(record, loss_spec)
            return lm + aux, (logits, record)

        run = jax.jit(jax.value_and_grad(loss, has_aux=True))
        (value, (logits, record)), grad = run(params)
    return {"run": run, "params": params, "value": value, "logits": logits, "record": record,
            "grad": grad, "targets": targets}


@pytest.mark.parametrize("spec, sequence_length", [
    (LossSpec(lb=0.01, z=0.001, sp=0.002, cp=0.001, var=0.5), None),
    (LossSpec(lb=0.01, lb_variant="sequence", z=0.001, sp=0.002, sp_mode="abs",
              sp_max_tokens=7, cp=0.001, cp_form="log", var=0.5), SEQ),
])
def test_all_weights_on_decoder_record_match_reference(decoder, spec, sequence_length):
    record = decoder["record"]
    assert record.num_routers == 3 and record.pair_cos is not None
    total, logged = aux_total(record, spec, sequence_length=sequence_length)
    _check_total(total, logged, _reference_terms(record, spec, sequence_length), spec)


def _reference_total(logits, record, targets):
    """The e2e loss in float64 from the decoder's outputs: cross-entropy + weighted oracle terms."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    lm = -np.take_along_axis(log_probs, targets[..., None], -1).mean()
    terms = _reference_terms(record, LossSpec(**E2E_WEIGHTS))
    return lm + sum(E2E_WEIGHTS[name] * mean for name, (mean, _) in terms.items())


def test_end_to_end_gradient_matches_finite_differences(decoder):
    """Directional derivative of (cross-entropy + aux_total) wrt all float64 params.

    The decoder computes in float32 by design (router, losses; style.md 3.12), so the finite
    difference evaluates the float64 oracle on the forward outputs at params +- STEP * v: no
    float32 rounding of the final scalar enters the difference quotient. The direction has
    random magnitudes and the gradient's signs: a direction with random signs over ~60k
    parameters cancels <g, v> some 300x below sum |g v|, under the float32 forward noise.
    """
    params, grad = decoder["params"], decoder["grad"]
    leaves, treedef = jax.tree.flatten(params)
    grad_leaves = [np.asarray(g, np.float64) for g in jax.tree.leaves(grad)]
    assert all(np.isfinite(g).all() for g in grad_leaves)
    rng = np.random.default_rng(85)
    direction = [np.sign(g) * np.abs(rng.normal(size=g.shape)) for g in grad_leaves]
    norm = np.sqrt(sum((d**2).sum() for d in direction))
    direction = [d / norm for d in direction]
    selected = np.sort(np.asarray(decoder["record"].expert_idx), -1)
    np.testing.assert_allclose(_reference_total(decoder["logits"], decoder["record"],
                                                decoder["targets"]),
                               float(decoder["value"]), rtol=1e-5)
    values = []
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
        for sign in (1.0, -1.0):
            moved = jax.tree.unflatten(treedef, [jnp.asarray(leaf + sign * STEP * d)
                                                 for leaf, d in zip(leaves, direction)])
            (_, (logits, record)), _ = decoder["run"](moved)
            # the top-k sets must not change, or the loss is not differentiable along the path
            np.testing.assert_array_equal(np.sort(np.asarray(record.expert_idx), -1), selected)
            values.append(_reference_total(logits, record, decoder["targets"]))
    finite_difference = (values[0] - values[1]) / (2 * STEP)
    analytic = sum(float((g * d).sum()) for g, d in zip(grad_leaves, direction))
    np.testing.assert_allclose(analytic, finite_difference, rtol=1e-4)
    router_grads = [layer for g, leaf in zip(grad_leaves, leaves) if leaf.shape[-2:] == (32, 6)
                    for layer in g.reshape(-1, 32, 6)]  # [(L,) D, E]: one per layer
    assert len(router_grads) == 3 and all(np.abs(g).max() > 0 for g in router_grads)
