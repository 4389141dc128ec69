"""Train and eval steps: next-token cross-entropy plus the weighted regularizers.

Loss weights are applied here and only here (style.md rule 4).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from moejax.regularizers import LossSpec, aux_total, routing_metrics, updated_bias


def lm_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy (nats).  logits: [B, S, V] float32, targets: [B, S] int."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def _loss_fn(model, tokens, loss_spec: LossSpec):
    """tokens [B, S + 1] -> (total loss, (metrics, record))."""
    logits, record = model(tokens[:, :-1])
    loss = lm_loss(logits, tokens[:, 1:])
    metrics = {"loss": loss}
    total = loss
    if record is not None:
        aux, terms = aux_total(record, loss_spec, sequence_length=tokens.shape[1] - 1)
        total = total + aux
        metrics.update(terms, total_loss=total)
    return total, (metrics, record)


def _routing_summary(record) -> dict:
    """routing/<name>: per-router values of every routing metric."""
    return {f"routing/{k}": v for k, v in routing_metrics(record).items()}


def _update_router_biases(model, record, rate: float) -> None:
    routers = model.routers()
    new = updated_bias(jnp.stack([_padded_bias(r, record) for r in routers]),
                       record.tokens_per_expert, rate, num_experts=record.num_experts)
    for i, router in enumerate(routers):
        router.bias[...] = new[i, : router.bias.shape[0]]


def _padded_bias(router, record):
    bias = router.bias[...]
    return jnp.pad(bias, (0, record.tokens_per_expert.shape[-1] - bias.shape[0]))


@functools.partial(nnx.jit, static_argnames="loss_spec")
def train_step(model, optimizer, tokens: jax.Array, loss_spec: LossSpec):
    """One optimizer step on tokens [B, S + 1]; returns a dict of metrics."""
    grad_fn = nnx.value_and_grad(_loss_fn, has_aux=True)
    (_, (metrics, record)), grads = grad_fn(model, tokens, loss_spec)
    optimizer.update(model, grads)
    if record is not None:
        if loss_spec.bias_rate > 0:
            _update_router_biases(model, record, loss_spec.bias_rate)
        metrics.update(_routing_summary(record))
    metrics["grad_norm"] = optax.tree.norm(grads)
    return metrics


@functools.partial(nnx.jit, static_argnames=("num_domains", "disable_top1"))
def eval_step(model, tokens: jax.Array, domains: jax.Array, num_domains: int,
              disable_top1: bool = False):
    """Validation on one batch.

    Args:
      tokens: [B, S + 1] int token ids.
      domains: [B, S + 1] int domain id of each token.
      num_domains: number of domain labels.
      disable_top1: the robustness test (every router skips each token's first choice).

    Returns:
      {"loss": mean next-token loss, "domain_counts": [R, E, num_domains] top-1 expert vs
      domain counts, "dropped_fraction": [R] token-slots dropped by capacity (the last two
      absent for a model without routers)}.
    """
    logits, record = model(tokens[:, :-1], disable_top1=disable_top1)
    out = {"loss": lm_loss(logits, tokens[:, 1:])}
    if record is not None:
        flat_domains = domains[:, :-1].reshape(-1)
        metrics = routing_metrics(record, domains=flat_domains, num_domains=num_domains)
        out["domain_counts"] = metrics["domain_counts"]
        out["dropped_fraction"] = metrics["dropped_fraction"]
    return out
