"""Evaluation as papers and labs do it, for any moejax Decoder and tokenizer.

Token level (`scoring.py`, `rolling.py`):

    score_continuations(model, contexts, continuations, *, batch_size=8, max_length=None)
        -> [Score(logprob, is_greedy, num_tokens)]        lm-eval's loglikelihood
    rolling_logprob(model, tokens, *, window, stride=None, batch_size=8, prefix_token=None)
        -> RollingScore(logprob, num_tokens)              sliding-window log-likelihood

Text level (`text.py`), with a `moejax.data.tokenizer.Tokenizer`:

    loglikelihood(model, tokenizer, [(context, continuation), ...], ...) -> [Score]
    loglikelihood_rolling(model, tokenizer, texts, *, window, ...) -> [RollingScore]
    generate_until(model, tokenizer, prompts, *, stop=(), max_new_tokens, ...) -> [str]

Held-out perplexity and bits per byte per domain (`perplexity.py`, `moejax-eval`), and a
model source's tokenizer and context length (`loading.py`). Importing this package loads no
training-only library (no grain, Orbax, matplotlib or tqdm).
"""

from moejax.evaluation.loading import context_length, model_tokenizer
from moejax.evaluation.perplexity import (
    DomainResult,
    Totals,
    evaluate_documents,
    heldout_documents,
    rates,
)
from moejax.evaluation.rolling import RollingScore, prefix_token_id, rolling_logprob
from moejax.evaluation.scoring import Score, score_continuations
from moejax.evaluation.text import (
    encode_pair,
    generate_until,
    loglikelihood,
    loglikelihood_rolling,
)

__all__ = [
    "DomainResult", "RollingScore", "Score", "Totals", "context_length", "encode_pair",
    "evaluate_documents", "generate_until", "heldout_documents", "loglikelihood",
    "loglikelihood_rolling", "model_tokenizer", "prefix_token_id", "rates", "rolling_logprob",
    "score_continuations",
]
