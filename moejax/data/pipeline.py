"""Data stage 2, the input pipeline: documents -> packed sequences -> shuffled, sharded batches.

Documents of one split (from `moejax.data.corpus.document_table`, which reads a text source
once per spec, or from prepared ArrayRecord shards) are tokenized as bytes (ids 0..255) and
joined into one stream with EOS_ID after every document, in the source's fixed order. The
stream is cut into consecutive windows of `seq_len + 1` tokens (the train step uses
window[:-1] as inputs and window[1:] as targets); the tail shorter than a window is dropped.
Each token carries the id of its document's domain (EOS carries the domain of the document it
ends); ids index the sorted `domain_names(spec)` and are the same for both splits. Each token
also carries its segment: the documents of a window are numbered 1, 2, ..., so the model masks
attention across documents and restarts positions at each.

`make_dataset` builds a grain pipeline over the windows:

    MapDataset.source(windows)
      .shuffle(seed)                                            train only; reseeded every epoch
      .repeat(None)                                             endless
      [process_index::process_count]                            this host's rows of each batch
      .batch(batch_size)                                        host batch; may straddle epochs
      .to_iter_dataset(ReadOptions(num_threads, prefetch))      threads, no worker processes

Iterator state: `iterator.get_state()` is grain's JSON-serialisable dict `{"next_index": int}`
(the number of batches already returned); `set_state(state)` on an iterator of a dataset built
with the same spec and arguments continues with exactly the next batch.
"""

from __future__ import annotations

import grain
import numpy as np

from moejax.data.corpus import (
    DataSpec,
    check_domain_selection,
    check_split,
    data_spec_from_config,
    document_table,
    domains_without_validation,
    is_validation,
    source_domain_names,
    validation_names,
)
from moejax.data.shards import RecordDocuments, prepare, read_index
from moejax.data.sources import Document
from moejax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, decode, encode

__all__ = [
    "BOS_ID", "EOS_ID", "PAD_ID", "VOCAB_SIZE", "DataSpec", "MemoryDocuments",
    "PackedSequences", "check_domain_selection", "data_spec_from_config", "decode", "domain_names",
    "domains_without_validation", "encode",
    "is_validation", "load_documents", "make_dataset", "num_sequences", "prepare",
    "validation_names",
]


class MemoryDocuments:
    """Documents of one split held in memory as raw bytes.

    Attributes:
      lengths: int64 [M] token count of each document (EOS not included).
    """

    def __init__(self, docs: list[Document], domain_ids: dict[str, int]):
        self._texts = [d.text for d in docs]
        self._domains = [domain_ids[d.domain] for d in docs]
        self.lengths = np.asarray([len(t) for t in self._texts], np.int64)

    def __len__(self) -> int:
        return len(self._texts)

    def document(self, index: int) -> tuple[np.ndarray, int]:
        """(tokens uint8 [n], domain id) of document `index`."""
        return np.frombuffer(self._texts[index], np.uint8), self._domains[index]


class PackedSequences:
    """grain random-access source: window i = tokens [i * length, (i + 1) * length) of the stream.

    The stream is every document followed by EOS_ID, in the order of `docs`.
    """

    def __init__(self, docs: MemoryDocuments | RecordDocuments, length: int):
        self._docs = docs
        self._length = length
        self._ends = np.cumsum(docs.lengths + 1)  # stream position just past each EOS
        self.num_tokens = int(self._ends[-1]) if self._ends.size else 0

    def __len__(self) -> int:
        return self.num_tokens // self._length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """{"tokens", "domains", "segments"}: int32 [length] each, of window `index`.

        segments numbers the documents in the window 1, 2, ... (EOS belongs to the document
        it ends), for attention masking and per-document positions.
        """
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} of {len(self)}")
        start, stop = index * self._length, (index + 1) * self._length
        tokens = np.empty(self._length, np.int32)
        domains = np.empty(self._length, np.int32)
        segments = np.empty(self._length, np.int32)
        pos, segment = start, 1
        doc = int(np.searchsorted(self._ends, start, side="right"))
        while pos < stop:
            text, domain = self._docs.document(doc)
            offset = pos - (int(self._ends[doc]) - text.size - 1)
            piece = text[offset:offset + stop - pos]
            count = piece.size
            tokens[pos - start:pos - start + count] = piece
            if pos + count < stop:  # the document ends inside this window
                tokens[pos - start + count] = EOS_ID
                count += 1
            domains[pos - start:pos - start + count] = domain
            segments[pos - start:pos - start + count] = segment
            pos, doc, segment = pos + count, doc + 1, segment + 1
        return {"tokens": tokens, "domains": domains, "segments": segments}

    def __repr__(self) -> str:
        return f"PackedSequences({self._docs!r}, length={self._length}, windows={len(self)})"


def domain_names(spec: DataSpec) -> list[str]:
    """Sorted domain names of the corpus (both splits); position = domain id."""
    if spec.corpus == "arrayrecord":
        return list(read_index(spec.paths[0])["domain_names"])
    return source_domain_names(spec)


def load_documents(spec: DataSpec, split: str) -> MemoryDocuments | RecordDocuments:
    """The documents of one split, in the source's fixed order.

    Raises:
      ValueError: unknown split, or the split has no documents (naming data.validation_every).
    """
    check_split(split)
    if spec.corpus == "arrayrecord":
        docs = RecordDocuments(spec.paths[0], split)
        where = f"data.paths={spec.paths}"
    else:
        table = document_table(spec)  # read once per spec
        docs = MemoryDocuments(table.select(spec, split),
                               {name: i for i, name in enumerate(table.domain_names)})
        where = f"{len(table.select(spec))} documents of data.corpus={spec.corpus!r}"
    if not len(docs):
        raise ValueError(f"the {split} split is empty: none of the {where} falls into it "
                         f"(data.validation_every={spec.validation_every} sends one document "
                         "in that many per domain, by name hash, to validation)")
    return docs


def num_sequences(spec: DataSpec, split: str, *, seq_len: int) -> int:
    """Number of packed windows of `seq_len + 1` tokens in a split, before host sharding."""
    return len(PackedSequences(load_documents(spec, split), seq_len + 1))


def make_dataset(spec: DataSpec, split: str, *, seq_len: int, batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1, shuffle: bool | None = None):
    """Endless batches of packed windows for one host.

    Args:
      spec: corpus and reader settings.
      split: "train" (shuffled with `seed`, reshuffled every epoch) or "validation" (fixed order).
      seq_len: model sequence length S; windows hold S + 1 tokens.
      batch_size: windows per batch B on this host.
      seed: shuffle seed in 0..2**32-1 (unused for validation).
      process_index: this host's index; it reads stream elements process_index,
        + process_count, ... of the shuffled, repeated split.
      process_count: number of hosts; together they read every global batch once.
      shuffle: shuffle windows with `seed` (default: train only). Evaluation uses a shuffled,
        fixed sample of the validation split, so its few batches span many documents.

    Returns:
      A grain IterDataset; its iterator yields {"tokens": int32 [B, S + 1],
      "domains": int32 [B, S + 1], "segments": int32 [B, S + 1]} and supports get_state() /
      set_state() (see module doc).

    Raises:
      ValueError: a bad argument (naming it), or a split too small for one window per host.
    """
    for name, value, low in (("seq_len", seq_len, 1), ("batch_size", batch_size, 1),
                             ("process_count", process_count, 1)):
        if value < low:
            raise ValueError(f"{name}={value}; allowed: >= {low}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index}; allowed: 0..{process_count - 1}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed={seed}; allowed: 0..2**32-1")
    windows = PackedSequences(load_documents(spec, split), seq_len + 1)
    if len(windows) < process_count:
        raise ValueError(f"the {split} split has {windows.num_tokens} tokens, {len(windows)} "
                         f"windows of seq_len + 1 = {seq_len + 1}; fewer than "
                         f"process_count={process_count}: use a larger corpus or shorter seq_len")
    dataset = grain.MapDataset.source(windows)
    if (split == "train") if shuffle is None else shuffle:
        dataset = dataset.shuffle(seed=seed)
    # Shuffle and repeat the whole split, then deal it out: batch i of process p holds stream
    # elements p, p + P, ... of global batch i, so P processes together see exactly the global
    # batches of one process (and their iterator states are equal: one saved state resumes all).
    dataset = dataset.repeat(None)[process_index::process_count]
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return dataset.to_iter_dataset(grain.ReadOptions(
        num_threads=spec.num_threads, prefetch_buffer_size=spec.prefetch_buffer_size))
