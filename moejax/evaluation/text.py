"""Text-level evaluation: strings in, scores or strings out, as lm-eval's model API asks.

- `loglikelihood(model, tokenizer, [(context, continuation), ...])` -> [Score]: the pair is
  tokenized as lm-eval's `_encode_pair` does: trailing whitespace of the context moves to
  the front of the continuation, the context is encoded alone and the continuation is the
  rest of encode(context + continuation) after as many tokens; an empty context (or one of
  whitespace only) is the prefix token (`prefix_token_id`) and the continuation is encoded
  alone.
- `loglikelihood_rolling(model, tokenizer, texts, window=...)` -> [RollingScore]: each text
  encoded and scored after the prefix token with sliding windows (`rolling.py`).
- `generate_until(model, tokenizer, prompts, stop=..., max_new_tokens=...)` -> [str]: the
  continuation text of each prompt.

Tokenizers add no special tokens (`Tokenizer.encode`); the prefix token is the only one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from moejax.evaluation.rolling import (
    RollingScore,
    prefix_token_id,
    rolling_scores,
    with_prefix,
)
from moejax.evaluation.scoring import Score, score_continuations, token_ids
from moejax.models.generate import generate
from moejax.options import check_int


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[np.ndarray, np.ndarray]:
    """(context ids, continuation ids) of one request, as lm-eval's `_encode_pair` (module
    docstring)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:
        return (np.asarray([prefix_token_id(tokenizer)], np.int32),
                tokenizer.encode(continuation))
    context_ids = tokenizer.encode(context)
    whole = tokenizer.encode(context + continuation)
    return context_ids, whole[len(context_ids):]


def loglikelihood(model, tokenizer, requests: Sequence[tuple[str, str]], *,
                  batch_size: int = 8, max_length: int | None = None) -> list[Score]:
    """lm-eval's loglikelihood on strings: [Score] of each (context, continuation).

    Tokenized with `encode_pair`, then `score_continuations` (batching, truncation from the
    left of the context to max_length, errors naming the request index, e.g. a continuation
    that encodes to no token)."""
    pairs = [encode_pair(tokenizer, context, continuation)
             for context, continuation in requests]
    return score_continuations(model, [c for c, _ in pairs], [c for _, c in pairs],
                               batch_size=batch_size, max_length=max_length)


def loglikelihood_rolling(model, tokenizer, texts: Sequence[str], *, window: int,
                          stride: int | None = None, batch_size: int = 8,
                          prefix_token: int | None = None) -> list[RollingScore]:
    """lm-eval's loglikelihood_rolling: [RollingScore] of each text, every token of it scored
    once after `prefix_token` (None: `prefix_token_id(tokenizer)`) with windows of `window`
    tokens advancing by `stride` (`rolling.py`); the windows of all texts are batched
    together. An empty text scores (0.0, 0)."""
    check_int("window", window)
    prefix = prefix_token_id(tokenizer) if prefix_token is None else prefix_token
    vocab = model.spec.vocab_size
    token_ids([prefix], "prefix_token", vocab)
    sequences = [with_prefix(token_ids(tokenizer.encode(text), f"texts[{i}]", vocab), prefix)
                 for i, text in enumerate(texts)]
    return rolling_scores(model, sequences, window=window, stride=stride,
                          batch_size=batch_size)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the earliest occurrence of any stop string (all of it if none occurs)."""
    found = [text.find(s) for s in stop if s and s in text]
    return text[:min(found)] if found else text


def _continuation_text(tokenizer, new: np.ndarray, stop: Sequence[str]) -> str:
    """The text of new ids [N]: cut before the first EOS, ids beyond the tokenizer (a padded
    vocabulary) dropped, then cut at the first stop string."""
    ends = np.flatnonzero(new == tokenizer.eos_id)
    new = new[:ends[0]] if ends.size else new
    return cut_at_stop(tokenizer.decode(new[new < tokenizer.vocab_size]), stop)


def _prompt_ids(tokenizer, prompts, vocab_size: int, keep: int | None) -> list[np.ndarray]:
    """Each prompt's ids (its last `keep` when given), checked (ValueError naming it)."""
    out = []
    for i, prompt in enumerate(prompts):
        ids = token_ids(tokenizer.encode(prompt), f"prompts[{i}]", vocab_size)
        if not ids.size:
            raise ValueError(f"prompts[{i}] encodes to no token; allowed: a prompt of at least "
                             "one token")
        out.append(ids if keep is None else ids[-keep:])
    return out


def generate_until(model, tokenizer, prompts: list[str], *, stop: Sequence[str] = (),
                   max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                   seed: int = 0, batch_size: int = 8,
                   max_length: int | None = None) -> list[str]:
    """The continuation text of each prompt, greedy (temperature 0) or sampled.

    Prompts of one token length are generated together, `batch_size` at a time (no padding,
    so no attention mask is needed), with moejax's KV cache (`moejax.models.generate`);
    every group samples with `seed`. Each continuation is cut before the first EOS and then
    at the first of the `stop` strings (not included); the prompt is not returned.

    Args:
      max_new_tokens: tokens generated per prompt (>= 1), before the cuts.
      max_length: the model's context: a prompt keeps its last max_length - max_new_tokens
        tokens (lm-eval's left truncation) and prompt + new tokens may not exceed it. None:
        prompts are kept whole, within MAX_POSITIONS (32768).

    Raises:
      ValueError: before any work, naming the prompt or the option: an empty prompt, an id
        outside the vocabulary, a bad option.
    """
    check_int("max_new_tokens", max_new_tokens)
    check_int("batch_size", batch_size)
    check_int("max_length", max_length, max_new_tokens + 1, optional=True)
    if isinstance(stop, str) or not all(isinstance(s, str) for s in stop):
        raise ValueError(f"stop={stop!r}; allowed: a list of strings")
    keep = None if max_length is None else max_length - max_new_tokens
    ids = _prompt_ids(tokenizer, prompts, model.spec.vocab_size, keep)
    groups: dict[int, list[int]] = {}
    for index, prompt in enumerate(ids):
        groups.setdefault(prompt.size, []).append(index)
    texts: list[str | None] = [None] * len(ids)
    for length in sorted(groups, reverse=True):
        members = groups[length]
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            out = generate(model, np.stack([ids[i] for i in chunk]), max_new_tokens,
                           temperature, top_p, seed, max_positions=max_length)
            new = np.asarray(out.tokens)[:, length:]
            for row, index in enumerate(chunk):
                texts[index] = _continuation_text(tokenizer, new[row], stop)
    return texts
