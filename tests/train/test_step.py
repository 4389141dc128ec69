"""The train step: weighted regularizers in the loss, routing metrics, bias update."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from moejax.models.decoder import Decoder, decoder_spec_from_config
from moejax.moe.router import RouterBias
from moejax.regularizers import LossSpec, aux_total
from moejax.train import step
from tests.regularizers import reference_losses

SPEC = {"vocab_size": 19, "d_model": 16, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
        "d_ff": 24, "moe": {"num_experts": 4, "top_k": 2, "d_hidden": 8, "record_cosine": True,
                            "router": {"use_bias": True}}}


def _model():
    return Decoder(decoder_spec_from_config(SPEC), rngs=nnx.Rngs(0))


def _tokens():
    return jnp.asarray(np.random.default_rng(0).integers(0, 19, (2, 9)), jnp.int32)


def test_total_loss_is_lm_plus_weighted_terms():
    loss_spec = LossSpec(lb=0.1, z=0.01, sp=0.2, cp=0.3)
    model, tokens = _model(), _tokens()
    total, (metrics, record) = step._loss_fn(model, tokens, loss_spec)
    logits, record = model(tokens[:, :-1])
    lm = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
    aux, terms = aux_total(record, loss_spec, sequence_length=8)
    expected = lm + 0.1 * terms["aux/lb"] + 0.01 * terms["aux/z"] + 0.2 * terms["aux/sp"] \
        + 0.3 * terms["aux/cp"]
    np.testing.assert_allclose(float(total), float(expected), rtol=1e-6)
    assert float(aux) != 0.0 and set(terms) >= {"aux/lb", "aux/z", "aux/sp", "aux/cp"}


def test_train_step_updates_biases_toward_balance():
    model, tokens = _model(), _tokens()
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    metrics = step.train_step(model, optimizer, tokens, LossSpec(lb=0.01, bias_rate=0.5))
    counts = np.asarray(metrics["routing/tokens_per_expert"])
    expected = 0.5 * np.sign(counts.mean(-1, keepdims=True) - counts)
    assert counts.shape == (2, 4)
    np.testing.assert_allclose(model.router_biases(), expected)
    # the bias is no Param: SGD moved the parameters but not the bias (exactly the sign step)
    assert not any(isinstance(v, RouterBias)
                   for v in jax.tree.leaves(nnx.state(model, nnx.Param),
                                            is_leaf=lambda x: isinstance(x, nnx.Variable)))
    assert "routing/entropy" in metrics and "aux/lb" in metrics


def _params_after_one_step(loss_spec, micro_batches):
    model = _model()
    optimizer = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 19, (4, 9)), jnp.int32)
    metrics = step.train_step(model, optimizer, tokens, loss_spec, micro_batches)
    return nnx.state(model, nnx.Param), metrics


def test_accumulated_global_load_balance_equals_one_big_batch():
    """Two micro-batches with lb_variant="global" make the update of one step on the whole
    batch (every term is a token mean, and the load balance sees both micro-batches' loads);
    the micro-batch variant does not."""
    spec = LossSpec(lb=1.0, lb_variant="global", z=0.1, sp=0.2, cp=0.3)
    want, want_metrics = _params_after_one_step(spec, 1)
    got, got_metrics = _params_after_one_step(spec, 2)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-5, atol=1e-6)
    for name in ("loss", "total_loss", "aux/lb", "aux/sp"):
        np.testing.assert_allclose(float(got_metrics[name]), float(want_metrics[name]), rtol=1e-5)
    np.testing.assert_array_equal(got_metrics["routing/tokens_per_expert"],
                                  want_metrics["routing/tokens_per_expert"])
    micro, _ = _params_after_one_step(dataclasses.replace(spec, lb_variant="batch"), 2)
    router = [np.asarray(a) for a in (got, micro, want)
              for a in [a["stacks"][0]["layers"][0]["ffn"]["block"]["router"]["kernel"][...]]]
    assert np.abs(router[1] - router[2]).max() > 100 * np.abs(router[0] - router[2]).max()


def test_train_step_load_balance_variants_against_numpy():
    """The per-sequence and the micro-batch load balance reach the step's loss as the oracle
    computes them on the step's own routing (two sequences of 8 tokens; they differ here)."""
    tokens = _tokens()
    _, record = _model()(tokens[:, :-1])  # no jitter: the step routes the same way
    wanted = {"sequence": reference_losses.load_balance(record.probs, record.expert_idx,
                                                         sequence_length=8)[0],
              "batch": reference_losses.load_balance(record.probs, record.expert_idx)[0]}
    assert abs(wanted["sequence"] - wanted["batch"]) > 1e-3
    for variant, want in wanted.items():
        model = _model()
        optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
        metrics = step.train_step(model, optimizer, tokens, LossSpec(lb=2.0, lb_variant=variant))
        np.testing.assert_allclose(float(metrics["aux/lb"]), want, rtol=1e-5)
        np.testing.assert_allclose(float(metrics["total_loss"] - metrics["loss"]), 2.0 * want,
                                   rtol=1e-5)


def test_routing_metrics_only_when_asked():
    """log_routing=False (the trainer's unlogged steps) skips the routing metrics: zeros of
    the same shapes, and the same update; one compiled step serves both."""
    tokens, spec = _tokens(), LossSpec(lb=0.01, sp=0.1)
    states, metrics = [], []
    for log_routing in (True, False):
        model = _model()
        optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
        metrics.append(step.train_step(model, optimizer, tokens, spec, 1,
                                       np.bool_(log_routing)))
        states.append(nnx.state(model, nnx.Param))
    for g, w in zip(jax.tree.leaves(states[1]), jax.tree.leaves(states[0]), strict=True):
        np.testing.assert_array_equal(g, w)
    routing = [name for name in metrics[0] if name.startswith("routing/")]
    assert "routing/entropy" in routing and "routing/transitions" in routing
    assert float(np.asarray(metrics[0]["routing/tokens_per_expert"]).sum()) == 2 * 2 * 8 * 2
    for name in routing:
        assert np.asarray(metrics[1][name]).shape == np.asarray(metrics[0][name]).shape
        assert not np.asarray(metrics[1][name]).any(), name
    np.testing.assert_array_equal(metrics[1]["loss"], metrics[0]["loss"])


def test_eval_step_loss_per_domain_against_numpy():
    """Per-domain sums of the next-token losses, grouped by the predicted token's domain, equal
    a float64 NumPy loop; a domain with no predicted token has zero of both."""
    model, tokens = _model(), _tokens()
    domains = jnp.asarray(np.random.default_rng(1).integers(0, 3, tokens.shape), jnp.int32)
    out = step.eval_step(model, tokens, domains, 4)
    logits = np.asarray(model(tokens[:, :-1])[0], np.float64)
    sums, counts = np.zeros(4), np.zeros(4)
    for b in range(tokens.shape[0]):
        for s in range(tokens.shape[1] - 1):
            row = logits[b, s]
            loss = np.log(np.exp(row - row.max()).sum()) + row.max() - row[int(tokens[b, s + 1])]
            sums[int(domains[b, s + 1])] += loss
            counts[int(domains[b, s + 1])] += 1
    np.testing.assert_allclose(out["domain_loss_sum"], sums, rtol=1e-5)
    np.testing.assert_array_equal(out["domain_tokens"], counts)
    assert counts[3] == 0 and counts[:3].all()
    np.testing.assert_allclose(float(out["loss_sum"]), sums.sum(), rtol=1e-5)
    assert float(out["tokens"]) == float(out["bytes"]) == counts.sum()  # one byte each


def _loss_ref(logits, targets):
    """float64 next-token losses [B, S] by a plain loop."""
    logits = np.asarray(logits, np.float64)
    out = np.zeros(targets.shape)
    for b in range(targets.shape[0]):
        for s in range(targets.shape[1]):
            row = logits[b, s]
            out[b, s] = np.log(np.exp(row - row.max()).sum()) + row.max() - row[targets[b, s]]
    return out


def test_eval_step_reads_trained_targets_and_their_bytes():
    """With trained flags and token bytes, the sums cover the trained targets only, and the
    bytes are those targets' UTF-8 bytes (bits per byte = loss_sum / ln 2 / bytes)."""
    model, tokens = _model(), _tokens()
    rng = np.random.default_rng(2)
    trained = jnp.asarray(rng.integers(0, 2, tokens.shape), jnp.int32)
    token_bytes = jnp.asarray(rng.integers(0, 5, tokens.shape), jnp.int32)
    domains = jnp.zeros_like(tokens)
    out = step.eval_step(model, tokens, domains, 1, token_bytes=token_bytes, trained=trained)
    losses = _loss_ref(model(tokens[:, :-1])[0], np.asarray(tokens[:, 1:]))
    read = np.asarray(trained[:, 1:], bool)
    np.testing.assert_allclose(float(out["loss_sum"]), losses[read].sum(), rtol=1e-5)
    assert float(out["tokens"]) == read.sum()
    assert float(out["bytes"]) == np.asarray(token_bytes[:, 1:])[read].sum()


def test_masked_loss_is_the_mean_over_the_step_s_trained_targets():
    """data.loss_on="completion": the LM loss (and so the update) is the mean over the trained
    targets of the whole step, the same with 2 micro-batches as with one, equal to NumPy."""
    model, tokens = _model(), jnp.asarray(np.random.default_rng(0).integers(0, 19, (4, 9)),
                                          jnp.int32)
    trained = np.random.default_rng(3).integers(0, 2, tokens.shape).astype(np.int32)
    trained[0] = 0  # a row without a trained target
    losses = _loss_ref(model(tokens[:, :-1])[0], np.asarray(tokens[:, 1:]))
    want = losses[trained[:, 1:] > 0].mean()
    params = {}
    for micro_batches in (1, 2):
        model = _model()
        optimizer = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)
        metrics = step.train_step(model, optimizer, tokens, LossSpec(), micro_batches,
                                  trained=jnp.asarray(trained))
        np.testing.assert_allclose(float(metrics["loss"]), want, rtol=1e-5)
        assert int(metrics["trained_tokens"]) == (trained[:, 1:] > 0).sum()
        params[micro_batches] = nnx.state(model, nnx.Param)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 params[1], params[2])
