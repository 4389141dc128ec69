"""Train and eval steps: next-token cross-entropy plus the weighted regularizers.

Loss weights are applied here and only here (style.md rule 4). With gradient accumulation
the train step runs its micro-batches itself and makes one optimizer update, so that
`loss.lb_variant="global"` sees the loads of the whole optimizer step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from moejax.record import concat_tokens
from moejax.regularizers import LossSpec, aux_total, routing_metrics, updated_bias
from moejax.reporting import metrics as schema


def token_losses(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Next-token cross-entropy (nats) of each position [B, S].
    logits: [B, S, V] float32, targets: [B, S] int."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def lm_loss(logits: jax.Array, targets: jax.Array, trained: jax.Array | None = None,
            count=None) -> jax.Array:
    """Next-token cross-entropy (nats) summed over the trained targets, over `count`.

    logits: [B, S, V] float32, targets: [B, S] int, trained: [B, S] (the loss reads a target
    where nonzero; None: all), count: the divisor (None: the trained targets here, a mean)."""
    losses = token_losses(logits, targets)
    if trained is None:
        return losses.mean() if count is None else losses.sum() / count
    weight = trained.astype(losses.dtype)
    total = (losses * weight).sum()
    return total / (jnp.maximum(weight.sum(), 1.0) if count is None else count)


def _loss_fn(model, tokens, loss_spec: LossSpec, step_tokens_per_expert=None, segments=None,
             trained=None, count=None):
    """tokens [B, S + 1] -> (total loss, (metrics, record)).

    step_tokens_per_expert: [R, E] loads of the whole optimizer step (all its micro-batches),
    for the global-batch load balance; None: this batch's own.
    segments: [B, S + 1] packed-document ids (attention stays within a document), or None.
    trained: [B, S + 1] the loss reads the token as a target where nonzero, or None (all);
    count: the LM loss's divisor (see `lm_loss`).
    """
    logits, record = model(tokens[:, :-1], segments=_inputs(segments))
    loss = lm_loss(logits, tokens[:, 1:], None if trained is None else trained[:, 1:], count)
    metrics = {schema.LOSS: loss}
    total = loss
    if record is not None:
        extra = None
        if step_tokens_per_expert is not None:  # the other micro-batches' loads
            extra = step_tokens_per_expert - record.tokens_per_expert
        aux, terms = aux_total(record, loss_spec, sequence_length=tokens.shape[1] - 1,
                               extra_tokens_per_expert=extra)
        total = total + aux
        metrics.update(terms)
        metrics[schema.TOTAL_LOSS] = total
    return total, (metrics, record)


def _inputs(segments):
    """The model inputs' part [B, S] of [B, S + 1] segment ids (None stays None)."""
    return None if segments is None else segments[:, :-1]


def _routing_summary(record) -> dict:
    """routing/<name>: per-router values of every routing metric."""
    return {schema.ROUTING + k: v for k, v in routing_metrics(record).items()}


def _update_router_biases(model, tokens_per_expert, num_experts, rate: float) -> None:
    biases = model.router_biases()
    width = tokens_per_expert.shape[-1]
    biases = jnp.pad(biases, ((0, 0), (0, width - biases.shape[-1])))
    model.set_router_biases(updated_bias(biases, tokens_per_expert, rate,
                                         num_experts=num_experts))


def _step_tokens_per_expert(model, micro_batches, micro_segments) -> jax.Array:
    """[R, E] loads of all micro-batches, from forward passes that leave the model unchanged
    (the random state is put back, so the jitter of these passes is that of the step's)."""
    rng_state = nnx.clone(nnx.state(model, nnx.RngState))
    counts = sum(model(batch[:, :-1], segments=_inputs(segments))[1].tokens_per_expert
                 for batch, segments in zip(micro_batches, micro_segments))
    nnx.update(model, rng_state)
    return jax.lax.stop_gradient(counts)


def _wide(x: jax.Array) -> jax.Array:
    """x in float32 at least (bfloat16 gradients are summed and measured in float32)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _mean(trees):
    return jax.tree.map(lambda *xs: sum(xs) / len(xs), *trees)


def _mean_gradient(trees):
    """The leaf-wise mean of gradient trees, summed in float32 at least, in their dtype."""
    return jax.tree.map(lambda *xs: (sum(map(_wide, xs)) / len(xs)).astype(xs[0].dtype), *trees)


@functools.partial(nnx.jit, static_argnames=("loss_spec", "micro_batches"),
                   donate_argnames=("model", "optimizer"))
def train_step(model, optimizer, tokens: jax.Array, loss_spec: LossSpec, micro_batches: int = 1,
               log_routing=True, segments=None, trained=None):
    """One optimizer step; returns a dict of metrics (with "finite_state": whether every
    parameter is finite after the update). The model's and optimizer's buffers are donated:
    the step updates them in place (the modules hold the new arrays afterwards).

    Args:
      tokens: [B, S + 1] int token ids, the whole optimizer step's batch.
      loss_spec: the regularizers.
      micro_batches: A, gradient-accumulation micro-batches; micro-batch m is rows m, m + A,
        m + 2A, ... (so each spans the batch's shards). Gradients, losses and metrics are
        means over the micro-batches, which have equal sizes, so the step equals one step on
        the whole batch wherever the loss is a mean over tokens; the global-batch load
        balance gets the loads of all micro-batches (one extra forward pass each).
      log_routing: [] bool (traced: one compile for both values): compute the "routing/*"
        metrics (entropy, loads, transitions, ...); when False they are zeros, not computed.
        The trainer asks for them on logged steps only.
      segments: [B, S + 1] int packed-document ids from the pipeline, or None.
      trained: [B, S + 1] the pipeline's "trained" flags (`data.loss_on="completion"`), or
        None: every target. With flags the LM loss is the mean over the step's trained targets
        (each micro-batch's sum over the step's count times A, so that the mean over the
        micro-batches is exactly that), and "trained_tokens" is logged.
    """
    batches = [tokens[m::micro_batches] for m in range(micro_batches)]
    micro_segments = [None if segments is None else segments[m::micro_batches]
                      for m in range(micro_batches)]
    micro_trained = [None if trained is None else trained[m::micro_batches]
                     for m in range(micro_batches)]
    count = None
    if trained is not None:  # the step's trained targets, shared by the micro-batches
        targets = jnp.asarray(trained[:, 1:], jnp.float32).sum()
        count = jnp.maximum(targets, 1.0) / micro_batches
    has_routers = model.spec.num_routers > 0
    step_counts = None
    if (micro_batches > 1 and has_routers and loss_spec.lb > 0
            and loss_spec.lb_variant == "global"):
        step_counts = _step_tokens_per_expert(model, batches, micro_segments)
    grad_fn = nnx.value_and_grad(_loss_fn, has_aux=True)
    grads, metrics, records = [], [], []
    for batch, batch_segments, batch_trained in zip(batches, micro_segments, micro_trained):
        (_, (batch_metrics, record)), batch_grads = grad_fn(
            model, batch, loss_spec, step_counts, batch_segments, batch_trained, count)
        grads.append(batch_grads)
        metrics.append(batch_metrics)
        records.append(record)
    grads, metrics = _mean_gradient(grads), _mean(metrics)
    optimizer.update(model, grads)
    if has_routers:
        record = concat_tokens(records) if micro_batches > 1 else records[0]
        if loss_spec.bias_rate > 0:
            _update_router_biases(model, record.tokens_per_expert, record.num_experts,
                                  loss_spec.bias_rate)
        summary = jax.eval_shape(_routing_summary, record)
        metrics.update(jax.lax.cond(
            log_routing, _routing_summary,
            lambda _: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), summary), record))
    metrics[schema.GRAD_NORM] = optax.tree.norm(jax.tree.map(_wide, grads))
    if trained is not None:
        metrics[schema.TRAINED_TOKENS] = targets
    metrics["finite_state"] = _all_finite(nnx.state(model, nnx.Param))  # the trainer's NaN guard
    return metrics


def _all_finite(tree) -> jax.Array:
    """[] bool: every element of every leaf is finite."""
    return jnp.all(jnp.stack([jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(tree)]))


@functools.partial(nnx.jit, static_argnames=("num_domains", "disable_top1"))
def eval_step(model, tokens: jax.Array, domains: jax.Array, num_domains: int,
              disable_top1: bool = False, segments=None, token_bytes=None, trained=None):
    """Validation on one batch.

    Args:
      tokens: [B, S + 1] int token ids.
      segments: [B, S + 1] int packed-document ids, or None.
      domains: [B, S + 1] int domain id of each token.
      num_domains: number of domain labels.
      disable_top1: the robustness test (every router skips each token's first choice).
      token_bytes: [B, S + 1] UTF-8 bytes each token covers, or None (one each).
      trained: [B, S + 1] the targets the loss reads (nonzero), or None (all).

    Returns:
      {"loss_sum": the losses of the read targets (nats), "tokens": their count, "bytes":
      the UTF-8 bytes they cover (bits per byte = loss_sum / ln 2 / bytes, summed over the
      batches), "domain_loss_sum" / "domain_tokens": [num_domains] the same per domain of the
      predicted token, "domain_counts": [R, E, num_domains] top-1 expert vs domain counts,
      "dropped_fraction": [R] token-slots dropped by capacity (the last two absent for a
      model without routers)}.
    """
    logits, record = model(tokens[:, :-1], segments=_inputs(segments), disable_top1=disable_top1)
    losses = token_losses(logits, tokens[:, 1:]).reshape(-1)
    read = (jnp.ones_like(losses) if trained is None
            else trained[:, 1:].reshape(-1).astype(losses.dtype))
    nbytes = (read if token_bytes is None
              else token_bytes[:, 1:].reshape(-1).astype(losses.dtype) * read)
    target_domains = domains[:, 1:].reshape(-1)
    out = {"loss_sum": (losses * read).sum(), "tokens": read.sum(), "bytes": nbytes.sum(),
           "domain_loss_sum": jax.ops.segment_sum(losses * read, target_domains, num_domains),
           "domain_tokens": jax.ops.segment_sum(read, target_domains, num_domains)}
    if record is not None:
        flat_domains = domains[:, :-1].reshape(-1)
        metrics = routing_metrics(record, domains=flat_domains, num_domains=num_domains)
        out["domain_counts"] = metrics["domain_counts"]
        out["dropped_fraction"] = metrics["dropped_fraction"]
    return out
