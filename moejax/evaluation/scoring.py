"""Scoring token sequences: `score_continuations` (lm-eval's loglikelihood) and the batching
that every scorer of this package shares.

A scoring `Row` is a token sequence `tokens [n]` read left to right: the model reads
tokens[:-1] and predicts the targets tokens[1:]; the targets from index `first` on are
counted (a continuation, or the new tokens of a rolling window), the others are context.
Rows are sorted by length, longest first, and cut into batches of `batch_size` rows; a
batch is right-padded (token id 0, never counted) to `batch_size` rows of a bucketed input
length, the smallest power of two >= the batch's longest input (at least MIN_BUCKET, at
most the caller's cap), so that jit compiles a few shapes. Right padding needs no attention
mask: attention is causal, so no real token reads a pad. Results come back in input order.

The log-probability of a target is minus the trainer's next-token cross-entropy
(`moejax.train.step.token_losses`, float32 on the device); a request's sum is taken on the
host in float64. A target is greedy when it is the argmax of its logits (the lowest id
among ties, as lm-eval's `argmax`).

Batching does not change a row's score for engines that drop nothing (moe.engine "dropless",
the default, and "dense"); under "capacity" the pad tokens compete for expert capacity as
any token of a training batch does.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moejax.models.generate import MAX_POSITIONS
from moejax.options import check_int
from moejax.train.step import token_losses

MIN_BUCKET = 16  # the shortest padded input length of a batch
BATCH_FIELDS = ("tokens", "trained", "token_bytes")  # int32 [B, L + 1] each, as eval_step reads


@dataclasses.dataclass(frozen=True)
class Score:
    """One request's score (lm-eval's loglikelihood answer).

    Attributes:
      logprob: sum over the continuation's tokens of log p(token | every token before), nats.
      is_greedy: every continuation token is the argmax of the model's prediction.
      num_tokens: the continuation's tokens (all of them are scored).
    """

    logprob: float
    is_greedy: bool
    num_tokens: int


class Row(NamedTuple):
    """tokens: int32 [n] (n >= 2); targets tokens[1:] from index `first` on are counted;
    token_bytes: [n] the UTF-8 bytes each token covers, or None (for bits per byte)."""

    tokens: np.ndarray
    first: int
    token_bytes: np.ndarray | None = None


def bucket_length(inputs: int, cap: int) -> int:
    """The padded input length of a batch whose longest row has `inputs` inputs: the smallest
    power of two >= max(inputs, MIN_BUCKET), at most `cap` (>= inputs)."""
    return min(max(MIN_BUCKET, 1 << max(inputs - 1, 0).bit_length()), cap)


def batches(rows: Sequence[Row], batch_size: int, cap: int
            ) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
    """(row indices, {"tokens", "trained", "token_bytes": int32 [batch_size, L + 1]}) per
    batch, longest rows first, L = `bucket_length`. "trained" is 1 where a position holds a
    counted target (eval_step's `trained`: position p >= 1 is target p - 1 of the row);
    pad positions and pad rows are 0 in every field."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].tokens))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        length = bucket_length(len(rows[chunk[0]].tokens) - 1, cap)
        out = {name: np.zeros((batch_size, length + 1), np.int32) for name in BATCH_FIELDS}
        for slot, index in enumerate(chunk):
            row, size = rows[index], len(rows[index].tokens)
            out["tokens"][slot, :size] = row.tokens
            out["trained"][slot, 1 + row.first:size] = 1
            if row.token_bytes is not None:
                out["token_bytes"][slot, :size] = row.token_bytes
        yield chunk, out


@functools.partial(jax.jit, static_argnums=(0,))
def _target_scores(graphdef, state, tokens):
    """tokens [B, L + 1] -> (log p(tokens[:, 1:]) float32 [B, L], greedy bool [B, L])."""
    model = nnx.merge(graphdef, state)
    model.eval()  # no router jitter
    logits, _ = model(tokens[:, :-1])
    targets = tokens[:, 1:]
    return -token_losses(logits, targets), jnp.argmax(logits, axis=-1) == targets


def score_rows(model, rows: Sequence[Row], *, batch_size: int, cap: int) -> list[Score]:
    """The Score of every row's counted targets, in the order of `rows` (each row at most
    `cap` + 1 tokens). All batches are dispatched before the first result is read."""
    graphdef, state = nnx.split(model)
    pending = [(chunk, batch["trained"][:, 1:].astype(bool),
                _target_scores(graphdef, state, jnp.asarray(batch["tokens"])))
               for chunk, batch in batches(rows, batch_size, cap)]
    scores: list[Score | None] = [None] * len(rows)
    for chunk, counted, device_out in pending:
        logprob, greedy = jax.device_get(device_out)
        for slot, index in enumerate(chunk):
            mask = counted[slot]
            scores[index] = Score(float(np.sum(logprob[slot][mask], dtype=np.float64)),
                                  bool(np.all(greedy[slot][mask])), int(mask.sum()))
    return scores


def token_ids(ids, name: str, vocab_size: int) -> np.ndarray:
    """int32 [n] of a request's ids (any int sequence), checked before the cast.

    Raises:
      ValueError: naming `name`: not a 1-D sequence of integers, or an id outside
        [0, vocab_size).
    """
    array = np.asarray(ids, dtype=np.int64 if len(ids) == 0 else None)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise ValueError(f"{name}: allowed: a list of integer token ids, got {type(ids).__name__}"
                         f" of shape {array.shape} and dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= vocab_size):
        raise ValueError(f"{name} holds id {int(array.min() if array.min() < 0 else array.max())};"
                         f" allowed: [0, {vocab_size}) (model.vocab_size)")
    return array.astype(np.int32)


def _check_requests(contexts, continuations, batch_size, max_length, vocab_size):
    """The requests as int32 arrays, every one checked (ValueError naming its index)."""
    check_int("batch_size", batch_size)
    check_int("max_length", max_length)
    if len(contexts) != len(continuations):
        raise ValueError(f"contexts has {len(contexts)} requests, continuations "
                         f"{len(continuations)}; allowed: one continuation per context")
    pairs = []
    for i, (context, continuation) in enumerate(zip(contexts, continuations, strict=True)):
        context = token_ids(context, f"contexts[{i}]", vocab_size)
        continuation = token_ids(continuation, f"continuations[{i}]", vocab_size)
        if not continuation.size:
            raise ValueError(f"continuations[{i}] is empty (request {i}); allowed: at least "
                             "one token")
        if not context.size:
            raise ValueError(f"contexts[{i}] is empty (request {i}); allowed: at least one token"
                             " (lm-eval puts the prefix token, BOS or EOS, there)")
        if continuation.size > max_length:
            raise ValueError(f"continuations[{i}] has {continuation.size} tokens (request {i});"
                             f" allowed: at most max_length={max_length}")
        pairs.append((context, continuation))
    return pairs


def continuation_row(context: np.ndarray, continuation: np.ndarray, max_length: int) -> Row:
    """context + continuation cut from the left to max_length + 1 tokens (the model reads at
    most max_length), the continuation counted: lm-eval's `(context + continuation)
    [-(max_length + 1):]`."""
    whole = np.concatenate([context, continuation])[-(max_length + 1):]
    return Row(whole, len(whole) - 1 - continuation.size)


def score_continuations(model, contexts: list[list[int]], continuations: list[list[int]], *,
                        batch_size: int = 8, max_length: int | None = None) -> list[Score]:
    """lm-eval's loglikelihood on token ids: the Score of each continuation given its context.

    Args:
      model: a moejax Decoder (not modified).
      contexts: [N] token-id lists, each non-empty.
      continuations: [N] token-id lists, each non-empty.
      batch_size: rows per forward pass.
      max_length: the most tokens the model reads: a longer context + continuation loses
        tokens from the left of its context (the continuation is kept whole). None:
        MAX_POSITIONS (32768, moejax's cap for a model that declares no context length);
        pass the model's own (`moejax.evaluation.context_length(source)`).

    Returns:
      [N] Scores in the order of the requests.

    Raises:
      ValueError: before any work, naming the request: an empty context or continuation, an
        id outside the vocabulary, a continuation longer than max_length; or a bad option.
    """
    max_length = MAX_POSITIONS if max_length is None else max_length
    pairs = _check_requests(contexts, continuations, batch_size, max_length,
                            model.spec.vocab_size)
    rows = [continuation_row(context, continuation, max_length)
            for context, continuation in pairs]
    return score_rows(model, rows, batch_size=batch_size, cap=max_length)
