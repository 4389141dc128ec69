"""Data stage 1c, tokens: documents -> `TokenizedDocument`s (ids, bytes covered, trained mask).

What the packing (`pipeline.PackedSequences`) and the shards (`shards.py`) hold of a document:
its token ids, the UTF-8 bytes each token covers (`Tokenizer.encode_documents`; they sum to
the document's bytes), whether the loss reads each token as a target (`trained`: a token is
trained when it ends inside one of the document's trained byte spans, all of them for plain
text) and its domain id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from moejax.data.sources import Document
from moejax.data.tokenizer import Tokenizer

_BATCH = 256  # documents per encode_documents call (the tokenizers library is multi-threaded)


class TokenizedDocument(NamedTuple):
    """One document as tokens.

    Attributes:
      tokens: [n] ids (unsigned, the smallest dtype that holds them).
      token_bytes: [n] UTF-8 bytes each token covers (unsigned).
      trained: bool [n] the loss reads the token as a target (may be a read-only view).
      domain: the domain id.
    """

    tokens: np.ndarray
    token_bytes: np.ndarray
    trained: np.ndarray
    domain: int


def trained_mask(token_bytes: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """bool [n]: tokens whose last byte lies in a span [start, end); all for no spans.

    A token covering no byte of its own (the tail of a character split over tokens) goes with
    the token before it."""
    if not spans:
        return np.broadcast_to(np.True_, token_bytes.shape)  # a view: no memory per token
    ends = np.cumsum(token_bytes)  # each token's end byte
    last = np.maximum(ends - 1, 0)
    mask = np.zeros(token_bytes.shape, bool)
    for start, end in spans:
        mask |= (last >= start) & (last < end) & (ends > start)
    return mask


def tokenize(tokenizer: Tokenizer, docs: Sequence[Document],
             domain_ids: Mapping[str, int]) -> list[TokenizedDocument]:
    """`docs` as TokenizedDocuments, in order (encoded `_BATCH` documents at a time)."""
    out = []
    for first in range(0, len(docs), _BATCH):
        batch = docs[first:first + _BATCH]
        encoded = tokenizer.encode_documents([d.text for d in batch])
        out.extend(TokenizedDocument(ids, nbytes, trained_mask(nbytes, d.trained),
                                     domain_ids[d.domain])
                   for d, (ids, nbytes) in zip(batch, encoded, strict=True))
    return out
