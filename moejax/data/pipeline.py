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
from moejax.data.mixture import MixedDocuments, Mixture, mix
from moejax.data.shards import RecordDocuments, prepare, read_index
from moejax.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    VOCAB_SIZE,
    Tokenizer,
    decode,
    encode,
    load_tokenizer,
)
from moejax.data.tokens import TokenizedDocument

# what every window (and batch) holds, int32 [S + 1] each
WINDOW_FIELDS = ("tokens", "domains", "segments", "token_bytes", "trained")

__all__ = [
    "BOS_ID", "EOS_ID", "PAD_ID", "VOCAB_SIZE", "DataSpec", "MemoryDocuments", "check_tokenizer",
    "PackedSequences", "check_domain_selection", "data_spec_from_config", "decode", "domain_names",
    "domains_without_validation", "encode",
    "is_validation", "load_documents", "load_tokenizer", "make_dataset", "num_sequences",
    "mixture_of", "packed_sequences", "prepare", "tokenizer_of", "validation_names",
]


class MemoryDocuments:
    """Documents of one split, tokenized once and held in memory.

    Attributes:
      lengths: int64 [M] token count of each document (EOS not included).
      domains: int64 [M] domain id of each document.
    """

    def __init__(self, docs: list[TokenizedDocument]):
        self._docs = docs
        self.lengths = np.asarray([d.tokens.size for d in docs], np.int64)
        self.domains = np.asarray([d.domain for d in docs], np.int64)

    def __len__(self) -> int:
        return len(self._docs)

    def document(self, index: int) -> TokenizedDocument:
        return self._docs[index]


class PackedSequences:
    """grain random-access source: window i = tokens [i * length, (i + 1) * length) of the stream.

    The stream is every document followed by `eos_id`, in the order of `docs`. With
    `train_all`, every target is trained (`data.loss_on="all"`); else a document's trained
    flags are kept and its EOS is trained when its last token is.
    """

    def __init__(self, docs: MemoryDocuments | RecordDocuments, length: int, eos_id: int,
                 train_all: bool = True):
        self._docs = docs
        self._length = length
        self._eos_id = eos_id
        self._train_all = train_all
        self._ends = np.cumsum(docs.lengths + 1)  # stream position just past each EOS
        self.num_tokens = int(self._ends[-1]) if self._ends.size else 0

    def __len__(self) -> int:
        return self.num_tokens // self._length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """`WINDOW_FIELDS` of window `index`: "tokens", "domains", "segments" (the documents
        in the window numbered 1, 2, ...; EOS belongs to the document it ends), "token_bytes"
        (UTF-8 bytes each token covers, 0 for EOS) and "trained" (the loss reads the token as
        a target), [length] each."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} of {len(self)}")
        start, stop = index * self._length, (index + 1) * self._length
        out = {name: np.empty(self._length, np.int32) for name in WINDOW_FIELDS}
        pos, segment = start, 1
        doc = int(np.searchsorted(self._ends, start, side="right"))
        while pos < stop:
            pos = self._copy_piece(out, self._docs.document(doc), doc, pos, start, stop, segment)
            doc, segment = doc + 1, segment + 1
        return out

    def _copy_piece(self, out: dict, document: TokenizedDocument, doc: int, pos: int,
                    start: int, stop: int, segment: int) -> int:
        """Writes the part of document `doc` (and its EOS) in [pos, stop); returns the next
        stream position."""
        size = document.tokens.size
        offset = pos - (int(self._ends[doc]) - size - 1)
        piece = slice(offset, offset + stop - pos)
        count = document.tokens[piece].size
        at = pos - start
        trained = np.ones(count, bool) if self._train_all else document.trained[piece]
        out["tokens"][at:at + count] = document.tokens[piece]
        out["token_bytes"][at:at + count] = document.token_bytes[piece]
        out["trained"][at:at + count] = trained
        if pos + count < stop:  # the document ends inside this window
            out["tokens"][at + count] = self._eos_id
            out["token_bytes"][at + count] = 0
            out["trained"][at + count] = (self._train_all or size == 0
                                          or bool(document.trained[-1]))
            count += 1
        out["domains"][at:at + count] = document.domain
        out["segments"][at:at + count] = segment
        return pos + count

    def __repr__(self) -> str:
        return f"PackedSequences({self._docs!r}, length={self._length}, windows={len(self)})"


def tokenizer_of(spec: DataSpec) -> Tokenizer:
    """The tokenizer of `data.tokenizer`, loaded once per spec object."""
    return spec._tokenizer  # noqa: SLF001 - the spec keeps it for the pipeline


def check_tokenizer(spec: DataSpec, vocab_size: int) -> None:
    """The model's vocabulary covers every id of `data.tokenizer`, and prepared shards were
    written by that tokenizer (their index's fingerprint).

    Raises:
      ValueError: one line naming both sides.
    """
    tokenizer = tokenizer_of(spec)
    if spec.corpus == "arrayrecord":
        written = read_index(spec.paths[0]).get("tokenizer", {})
        if written.get("fingerprint") != tokenizer.fingerprint:
            raise ValueError(
                f"data.paths={spec.paths[0]!r} was prepared with tokenizer "
                f"{written.get('name')!r} (fingerprint {written.get('fingerprint')}), but "
                f"data.tokenizer={spec.tokenizer!r} has fingerprint {tokenizer.fingerprint}: "
                "set data.tokenizer to the one it was prepared with, or prepare it again")
    if vocab_size < tokenizer.vocab_size:
        raise ValueError(f"model.vocab_size={vocab_size} cannot embed every id of "
                         f"data.tokenizer={spec.tokenizer!r} (ids 0..{tokenizer.vocab_size - 1})"
                         f": use a model with >= {tokenizer.vocab_size} ids")


def domain_names(spec: DataSpec) -> list[str]:
    """Sorted domain names of the corpus (both splits); position = domain id."""
    if spec.corpus == "arrayrecord":
        return list(read_index(spec.paths[0])["domain_names"])
    return source_domain_names(spec)


def load_documents(spec: DataSpec, split: str):
    """The documents of one split, in the source's fixed order; the training split in the
    order of `data.mixture` when there is one (`mixture.MixedDocuments`).

    Raises:
      ValueError: unknown split, the split has no documents (naming data.validation_every),
        or a mixture whose patterns do not fit the domains.
    """
    docs = _split_documents(spec, split)
    if split == "train" and spec.mixture:
        return MixedDocuments(docs, mixture_of(spec, docs).order)
    return docs


def _split_documents(spec: DataSpec, split: str) -> MemoryDocuments | RecordDocuments:
    check_split(split)
    if spec.corpus == "arrayrecord":
        docs = RecordDocuments(spec.paths[0], split)
        where = f"data.paths={spec.paths}"
    else:
        table = document_table(spec)  # read and tokenized once per spec
        docs = MemoryDocuments(table.tokenized(spec, split))
        where = f"{len(table.select(spec))} documents of data.corpus={spec.corpus!r}"
    if not len(docs):
        raise ValueError(f"the {split} split is empty: none of the {where} falls into it "
                         f"(data.validation_every={spec.validation_every} sends one document "
                         "in that many per domain, by name hash, to validation)")
    return docs


def mixture_of(spec: DataSpec, docs=None) -> Mixture | None:
    """The training split's `data.mixture` (its order, target and realised token shares), or
    None without one. `docs`: the split's unmixed documents, when at hand."""
    if not spec.mixture:
        return None
    if docs is None:
        docs = _split_documents(spec, "train")
    return mix(spec.mixture, docs.lengths, docs.domains, domain_names(spec))


def num_sequences(spec: DataSpec, split: str, *, seq_len: int) -> int:
    """Number of packed windows of `seq_len + 1` tokens in a split, before host sharding."""
    return len(packed_sequences(spec, split, seq_len=seq_len))


def packed_sequences(spec: DataSpec, split: str, *, seq_len: int) -> PackedSequences:
    """The packed windows of `seq_len + 1` tokens of one split."""
    return PackedSequences(load_documents(spec, split), seq_len + 1, tokenizer_of(spec).eos_id,
                           train_all=spec.loss_on == "all")


def make_dataset(spec: DataSpec, split: str, *, seq_len: int, batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1, shuffle: bool | None = None):
    """Endless batches of packed windows for one host.

    Args:
      spec: corpus and reader settings.
      split: "train" (shuffled with `seed`, reshuffled every epoch) or "validation" (fixed order).
      seq_len: model sequence length S; windows hold S + 1 tokens.
      batch_size: windows per batch B on this host.
      seed: shuffle seed in 0..2**32-1; for the validation split `data.validation_seed`
        replaces it when set, so that runs of different seeds evaluate the same windows.
      process_index: this host's index; it reads stream elements process_index,
        + process_count, ... of the shuffled, repeated split.
      process_count: number of hosts; together they read every global batch once.
      shuffle: shuffle windows with `seed` (default: train only). Evaluation uses a shuffled,
        fixed sample of the validation split, so its few batches span many documents.

    Returns:
      A grain IterDataset; its iterator yields {name: int32 [B, S + 1]} for every name of
      WINDOW_FIELDS and supports get_state() / set_state() (see module doc).

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
    if split == "validation" and spec.validation_seed is not None:
        seed = spec.validation_seed
    windows = packed_sequences(spec, split, seq_len=seq_len)
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
