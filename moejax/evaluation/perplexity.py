"""Perplexity and bits per byte of held-out text, per domain: what `moejax-eval` computes.

Documents come from moejax's own sources (`moejax.data.sources`: "files", "jsonl",
"parquet", "hf_dataset"), read whole (not chunked, no train/validation split: every
document is held out), each file read on its own so that its domain can be the file
(`domain_by="file"`: its path relative to the deepest directory holding every file, as
`data.paths` names documents) or what the source says (`domain_by="source"`: a file's parent
directory, or a record's `domain_field`). They are tokenized once
(`moejax.data.tokens.tokenize`: ids and the UTF-8 bytes each token covers).

Every document is scored as `loglikelihood_rolling` scores it (`rolling.py`): its tokens
after the prefix token (`prefix_token_id`), each token once, windows of `window` tokens
advancing by `stride`; the document's end-of-text token is not scored (lm-eval's rule; the
trainer's packed validation windows differ: they score EOS, lose each window's first token
to context and never give a document's first token a prefix). The windows of one domain
are batched (`scoring.batches`) and run through the trainer's `eval_step`, which sums the
losses, the scored tokens and the bytes they cover (the trainer's `val_bits_per_byte`
numerator and denominator), with each router's top-1 expert disabled on request.

Units (`rates`), for a domain's sums of N scored tokens covering B UTF-8 bytes with a loss
L = -sum ln p (nats): nats_per_token L / N, bits_per_token L / (N ln 2), bits_per_byte
L / (B ln 2) (bits per UTF-8 byte: comparable across tokenizers), perplexity exp(L / N) (per
token). "all" sums every document (token-weighted, not a mean of the domains).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

from moejax.data.corpus import DataSpec
from moejax.data.sources import RECORD_SOURCES, SOURCES, Document
from moejax.data.sources.paths import expand_paths, relative_names
from moejax.data.tokens import TokenizedDocument, tokenize
from moejax.evaluation.rolling import prefix_token_id, rolling_rows, with_prefix
from moejax.evaluation.scoring import Row, batches
from moejax.options import check_choice, check_int
from moejax.train.step import eval_step

LN2 = math.log(2.0)
HELDOUT_CORPORA = ("files", *RECORD_SOURCES)  # the sources that read --data's paths
DOMAIN_BY = ("file", "source")
UNITS = {  # the JSON's keys, and what each one is
    "nats_per_token": "-sum ln p / scored tokens (nats per token)",
    "bits_per_token": "-sum log2 p / scored tokens (bits per token)",
    "bits_per_byte": "-sum log2 p / UTF-8 bytes the scored tokens cover (bits per byte)",
    "perplexity": "exp(nats_per_token) (per token)",
}


@dataclasses.dataclass(frozen=True)
class Totals:
    """Sums over documents: how many, their scored tokens, the UTF-8 bytes those tokens
    cover, and the loss L = -sum ln p (nats)."""

    documents: int = 0
    tokens: int = 0
    bytes: int = 0
    nats: float = 0.0

    def __add__(self, other: Totals) -> Totals:
        return Totals(self.documents + other.documents, self.tokens + other.tokens,
                      self.bytes + other.bytes, self.nats + other.nats)


@dataclasses.dataclass(frozen=True)
class DomainResult:
    """One domain's (or "all"'s) totals, and with each top-1 expert disabled (or None)."""

    domain: str
    totals: Totals
    top1_disabled: Totals | None = None

    def as_json(self) -> dict:
        """{"domain", "documents", "tokens", "bytes", UNITS..., "top1_disabled": {UNITS...}}."""
        out = {"domain": self.domain, "documents": self.totals.documents,
               "tokens": self.totals.tokens, "bytes": self.totals.bytes, **rates(self.totals)}
        if self.top1_disabled is not None:
            out["top1_disabled"] = rates(self.top1_disabled)
        return out


def rates(totals: Totals) -> dict[str, float | None]:
    """The UNITS of `totals` (module docstring); None where nothing was scored."""
    if totals.tokens == 0:
        return dict.fromkeys(UNITS)
    nats = totals.nats / totals.tokens
    return {"nats_per_token": nats, "bits_per_token": nats / LN2,
            "bits_per_byte": totals.nats / LN2 / totals.bytes if totals.bytes else None,
            "perplexity": math.exp(nats) if nats < 700 else math.inf}


def heldout_documents(paths: Sequence[str], corpus: str = "files", *, domain_by: str = "file",
                      text_field: str = "text", domain_field: str | None = None
                      ) -> list[Document]:
    """The documents of `paths` (files or globs; for "hf_dataset" saved dataset
    directories), whole, with their domains (`domain_by`, module docstring), in path order.

    Raises:
      ValueError / FileNotFoundError: naming the option (`corpus`, `domain_by`,
        `domain_field`) or `data.paths` and the file (no such file, unreadable records).
    """
    check_choice("corpus", corpus, HELDOUT_CORPORA)
    check_choice("domain_by", domain_by, DOMAIN_BY)
    if domain_field is not None and corpus not in RECORD_SOURCES:
        raise ValueError(f"domain_field={domain_field!r} is read by the record corpora "
                         f"({', '.join(RECORD_SOURCES)}), not corpus={corpus!r}")
    if not paths:
        raise ValueError("data.paths is empty; allowed: files or globs")
    items = ([pathlib.Path(p).expanduser().resolve() for p in paths] if corpus == "hf_dataset"
             else expand_paths(tuple(paths)))
    docs = []
    for name, item in zip(relative_names(items), items, strict=True):
        spec = DataSpec(corpus=corpus, paths=(str(item),), text_field=text_field,
                        domain_field=domain_field)
        for doc in SOURCES[corpus].documents(spec):
            docs.append(doc._replace(domain=name) if domain_by == "file" else doc)
    return docs


def document_rows(doc: TokenizedDocument, prefix: int, window: int, stride: int) -> list[Row]:
    """The rolling windows of one document after `prefix`, with the bytes of each token."""
    seq = with_prefix(doc.tokens, prefix)
    nbytes = np.concatenate([np.zeros(1, np.int32), np.asarray(doc.token_bytes, np.int32)])
    return rolling_rows(seq, window, stride, nbytes)


def corpus_totals(model, docs: Sequence[TokenizedDocument], *, prefix: int, window: int,
                  stride: int, batch_size: int, disable_top1: bool = False) -> Totals:
    """Totals of `docs`, each scored with rolling windows through the trainer's eval_step
    (`model` in eval mode: no router jitter; the caller's model is not changed)."""
    graphdef, state = nnx.split(model)
    model = nnx.merge(graphdef, state)
    model.eval()
    rows = [row for doc in docs for row in document_rows(doc, prefix, window, stride)]
    outs = []
    for _, batch in batches(rows, batch_size, window):
        tokens = batch["tokens"]
        outs.append(eval_step(model, tokens, np.zeros_like(tokens), 1, disable_top1,
                              token_bytes=batch["token_bytes"], trained=batch["trained"]))
    sums = np.zeros(3)
    for out in jax.device_get(outs):
        sums += [float(out[name]) for name in ("loss_sum", "tokens", "bytes")]
    return Totals(len(docs), int(round(sums[1])), int(round(sums[2])), float(sums[0]))


def evaluate_documents(model, tokenizer, docs: Sequence[Document], *, window: int,
                       stride: int | None = None, batch_size: int = 8,
                       disable_top1: bool = False, prefix_token: int | None = None
                       ) -> tuple[list[DomainResult], DomainResult]:
    """Per-domain results (sorted by domain name) and "all" of held-out documents.

    Args:
      model: a moejax Decoder (not modified).
      tokenizer: a `moejax.data.tokenizer.Tokenizer` whose ids the model embeds.
      docs: the documents (`heldout_documents`).
      window, stride: the rolling windows (`rolling.py`); stride None: window.
      batch_size: windows per forward pass.
      disable_top1: also score with every router's top-1 expert disabled.
      prefix_token: the first token's context; None: `prefix_token_id(tokenizer)`.

    Raises:
      ValueError: a bad option; the tokenizer's ids do not fit the model.
    """
    stride = window if stride is None else stride
    check_int("window", window)
    check_int("stride", stride, 1, window)
    check_int("batch_size", batch_size)
    if tokenizer.vocab_size > model.spec.vocab_size:
        raise ValueError(f"tokenizer {tokenizer.name} has ids 0..{tokenizer.vocab_size - 1}, "
                         f"beyond the model's vocab_size={model.spec.vocab_size}")
    prefix = prefix_token_id(tokenizer) if prefix_token is None else prefix_token
    names = sorted({doc.domain for doc in docs})
    tokenized = tokenize(tokenizer, list(docs), {name: i for i, name in enumerate(names)})
    modes = (False, True) if disable_top1 else (False,)
    results = []
    for i, name in enumerate(names):
        members = [doc for doc in tokenized if doc.domain == i]
        totals = [corpus_totals(model, members, prefix=prefix, window=window, stride=stride,
                                batch_size=batch_size, disable_top1=mode) for mode in modes]
        results.append(DomainResult(name, totals[0], totals[1] if disable_top1 else None))
    return results, _all(results, disable_top1)


def _all(results: list[DomainResult], disable_top1: bool) -> DomainResult:
    """"all": the sums over the domains."""
    total = sum((r.totals for r in results), Totals())
    off = sum((r.top1_disabled for r in results), Totals()) if disable_top1 else None
    return DomainResult("all", total, off)
