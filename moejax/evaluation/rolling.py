"""The log-likelihood of a long document with sliding windows: `rolling_logprob`.

A sequence `seq` of n tokens (the document, after the prefix token when one is given) has
the targets seq[1], ..., seq[n - 1]; each is scored exactly once. `window` is the most
tokens the model reads in one forward pass (its input length: use the model's context), and
windows start every `stride` tokens (default `window`):

    window 0 reads seq[0 : e0], e0 = min(window, n - 1), and scores targets 1..e0;
    window k reads seq[b : e], e = min(k * stride + window, n - 1), b = max(0, e - window),
      and scores the targets it reaches that no earlier window scored, (e_{k-1}, e];
    it stops once target n - 1 is scored.

So a target j scored in a window starting at b is predicted from the j - b tokens before
it, at most `window` (the prefix token counts); with stride < window every target after the
first window keeps at least window - stride + 1 of them, and each target is scored in the
first window that reaches it, the one where it has the most context. The last window is
moved left to end at the sequence's end (b = e - window), so the document's tail gets a full
window of context for the same cost. This is exactly lm-eval's `get_rolling_token_windows(
tokens, prefix_token, max_seq_len=window, context_len=window - stride + 1)` with
`make_disjoint_window` (stride = window: lm-eval's loglikelihood_rolling, context_len=1),
and Hugging Face's perplexity guide (`stride`, `max_length=window`) except that the guide
never scores a window's first token (with stride = window one token per window is lost) and
does not move its last window. When window >= n - 1 it is one forward pass: the full-sequence
log-likelihood.

The prefix token (`prefix_token_id`): lm-eval scores a document's first token given a
prefix; moejax uses the tokenizer's BOS when it is a Hugging Face tokenizer that names one
(Mixtral, DeepSeek), else its EOS (Qwen, OLMoE, a tokenizer trained with `train_bpe`, and the
byte tokenizer, whose BOS 257 moejax never trains: the pipeline separates documents with EOS).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from moejax.evaluation.scoring import Row, score_rows, token_ids
from moejax.options import check_int


@dataclasses.dataclass(frozen=True)
class RollingScore:
    """A document's log-likelihood: `logprob` (nats, summed over its scored tokens) and
    `num_tokens` (how many were scored: all of its tokens with a prefix token, all but the
    first without)."""

    logprob: float
    num_tokens: int


def prefix_token_id(tokenizer) -> int:
    """The token a document's first token is scored after: the tokenizer's BOS when it is a
    Hugging Face tokenizer that names one, else its EOS (see the module docstring)."""
    if tokenizer.directory is not None and tokenizer.bos_id is not None:
        return int(tokenizer.bos_id)
    return int(tokenizer.eos_id)


def rolling_windows(num_targets: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows over a sequence whose targets are its tokens 1..num_targets: per window
    (begin, end, scored): it reads tokens [begin, end), predicts tokens begin + 1..end and
    counts those after `scored` (the last target of the window before). Module docstring."""
    check_int("window", window)
    check_int("stride", stride, 1, window)
    windows, scored, start = [], 0, 0
    while scored < num_targets:
        end = min(start + window, num_targets)
        begin = max(0, end - window)
        windows.append((begin, end, scored))
        scored, start = end, start + stride
    return windows


def rolling_rows(seq: np.ndarray, window: int, stride: int,
                 token_bytes: np.ndarray | None = None) -> list[Row]:
    """The scoring rows of `seq` [n] (and its token_bytes [n], if given): one per window."""
    return [Row(seq[begin:end + 1], scored - begin,
                None if token_bytes is None else token_bytes[begin:end + 1])
            for begin, end, scored in rolling_windows(len(seq) - 1, window, stride)]


def with_prefix(tokens: np.ndarray, prefix_token: int | None) -> np.ndarray:
    """int32 [n (+ 1)]: `tokens` after `prefix_token`, or as they are for None."""
    if prefix_token is None:
        return np.asarray(tokens, np.int32)
    return np.concatenate([np.asarray([prefix_token], np.int32), np.asarray(tokens, np.int32)])


def rolling_scores(model, sequences: Sequence[np.ndarray], *, window: int,
                   stride: int | None = None, batch_size: int = 8) -> list[RollingScore]:
    """The RollingScore of each sequence (the prefix token, if any, already in front), the
    windows of every sequence batched together."""
    stride = window if stride is None else stride
    check_int("batch_size", batch_size)
    check_int("stride", stride, 1, window)
    rows, owner = [], []
    for index, seq in enumerate(sequences):
        seq_rows = rolling_rows(seq, window, stride)
        rows += seq_rows
        owner += [index] * len(seq_rows)
    scores = score_rows(model, rows, batch_size=batch_size, cap=window)
    logprob, counts = np.zeros(len(sequences)), np.zeros(len(sequences), np.int64)
    for index, score in zip(owner, scores, strict=True):
        logprob[index] += score.logprob
        counts[index] += score.num_tokens
    return [RollingScore(float(lp), int(n)) for lp, n in zip(logprob, counts, strict=True)]


def rolling_logprob(model, tokens: list[int], *, window: int, stride: int | None = None,
                    batch_size: int = 8, prefix_token: int | None = None) -> RollingScore:
    """The log-likelihood of a long document with sliding windows (module docstring).

    Args:
      model: a moejax Decoder (not modified).
      tokens: the document's ids.
      window: the most tokens the model reads in one pass (>= 1; its context length).
      stride: how far windows advance, in [1, window]; None: window (disjoint windows).
      batch_size: windows per forward pass.
      prefix_token: scored first-token context (e.g. `prefix_token_id(tokenizer)`): every
        token of `tokens` is scored after it. None: tokens[0] is context only and the
        others are scored.

    Returns:
      RollingScore(logprob, num_tokens); (0.0, 0) for a document with nothing to score.

    Raises:
      ValueError: a bad option or an id outside the vocabulary, before any work.
    """
    check_int("window", window)
    vocab = model.spec.vocab_size
    seq = with_prefix(token_ids(tokens, "tokens", vocab), prefix_token)
    if prefix_token is not None:
        token_ids([prefix_token], "prefix_token", vocab)
    return rolling_scores(model, [seq], window=window, stride=stride, batch_size=batch_size)[0]
