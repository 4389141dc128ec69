"""Train and eval steps: next-token cross-entropy of the decoder."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def lm_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy (nats).  logits: [B, S, V] float32, targets: [B, S] int."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def _loss_fn(model, tokens):
    logits, records = model(tokens[:, :-1])
    loss = lm_loss(logits, tokens[:, 1:])
    return loss, {"loss": loss}


@nnx.jit
def train_step(model, optimizer, tokens: jax.Array):
    """One optimizer step on tokens [B, S + 1]; returns a dict of scalar metrics."""
    (_, metrics), grads = nnx.value_and_grad(_loss_fn, has_aux=True)(model, tokens)
    optimizer.update(model, grads)
    metrics["grad_norm"] = optax.global_norm(grads)
    return metrics


@nnx.jit
def eval_step(model, tokens: jax.Array):
    """Validation loss on tokens [B, S + 1]."""
    loss, _ = _loss_fn(model, tokens)
    return {"val_loss": loss, "val_bits_per_byte": loss / jnp.log(2.0)}
