"""The train step: weighted regularizers in the loss, routing metrics, bias update."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from moejax.layers.decoder import Decoder, decoder_spec_from_config
from moejax.regularizers import LossSpec, aux_total
from moejax.train import step

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
    for r, router in enumerate(model.routers()):
        expected = 0.5 * np.sign(counts[r].mean() - counts[r])
        np.testing.assert_allclose(router.bias[...], expected)
    # the bias is no Param: SGD moved the parameters but not the bias (exactly the sign step)
    assert not any(isinstance(v, type(model.routers()[0].bias))
                   for v in jax.tree.leaves(nnx.state(model, nnx.Param),
                                            is_leaf=lambda x: isinstance(x, nnx.Variable)))
    assert "routing/entropy" in metrics and "aux/lb" in metrics
