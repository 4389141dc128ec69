"""Data stage 1b, pre-tokenized shards: a text corpus tokenized once into ArrayRecord files.

`prepare(spec, out_dir)` reads a text corpus ("stdlib", "files" or "jsonl") in the source's
order, tokenizes it with `load_tokenizer(spec.tokenizer)` in `workers` spawned processes
(`process_map.ordered_map`: batches of documents, results in order, so the files do not depend
on the number of workers; bytes by default, and a corpus of one batch, are tokenized in this
process) and writes:

    out_dir/index.json                  see below
    out_dir/train.array_record          one record per document (the format below)
    out_dir/train_lengths.npy           int64 [documents]: tokens of each record, for packing
    out_dir/train_domains.npy           int64 [documents]: domain id of each record (mixtures)
    out_dir/validation.array_record     the same for the validation split
    out_dir/validation_lengths.npy

The directory appears whole or not at all (`moejax.atomic.atomic_directory`): it is written
into a temporary sibling, under a lock on `<out_dir>.lock`, and renamed into place when
complete; with `overwrite` an old prepared corpus is replaced only then, so a failure (a
data error, a full disk, a kill) leaves the old corpus readable, or nothing.

index.json: {"format": FORMAT, "tokenizer": {"name": data.tokenizer as given, "fingerprint"},
"vocab_size", "eos_id", "bos_id", "pad_id" (the tokenizer's), "domain_names" (position = id),
"source" (the DataSpec fields that chose the documents), "splits": {split: {"records",
"lengths", "documents", "tokens", "bytes" (UTF-8 bytes of the text = the sum of token_bytes),
"trained_tokens"}}}.

A record is one `TokenizedDocument` (`moejax.data.tokens`), little-endian:

    int32 [3]       domain id, n (tokens), flags
    tokens          [n] uint16 when flags & 1 (every id < 65536), else int32
    token_bytes     nothing when flags & 2 (each token covers one byte, as bytes does);
                    else [n] uint8 when flags & 4 (every count < 256), else int32
    trained         nothing when flags & 8 (every token trained); else np.packbits of the
                    bool [n] mask, ceil(n / 8) bytes

`trained` is `tokens.trained_mask` as `tokens.tokenize` computes it from the document's trained
spans (all true for plain text), whatever `data.loss_on`: the pipeline applies `loss_on` when it
reads the shards. A byte-tokenized plain document takes 2 bytes a token, a BPE one about 3.

`corpus="arrayrecord"` with `paths=(out_dir,)` then reads the documents by random access
(`RecordDocuments`), so memory grows with the number of documents, not of tokens. The split
and the domain ids are the ones fixed at prepare time. A directory of format 1 (before any
tokenizer but bytes) is refused with a message to prepare it again.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
from collections.abc import Iterator, Mapping

import grain
import numpy as np
import tqdm
from array_record.python.array_record_module import ArrayRecordWriter

from moejax.atomic import atomic_directory
from moejax.data.corpus import (
    SPLITS,
    DataSpec,
    check_domain_selection,
    check_split,
    iter_documents,
    read_table,
)
from moejax.data.process_map import ordered_map
from moejax.data.sources import Document
from moejax.data.tokenizer import BYTES, Tokenizer, load_tokenizer
from moejax.data.tokens import TokenizedDocument, tokenize

FORMAT = "moejax-arrayrecord/2"
_OLD_FORMATS = ("moejax-arrayrecord/1",)
INDEX_FILE = "index.json"
_WRITER_OPTIONS = "group_size:1"  # one record per chunk: cheap random access
_SOURCE_FIELDS = ("corpus", "paths", "text_field", "domain_field", "domains", "exclude_domains",
                  "validation_every", "chunk_bytes", "prompt_field", "completion_field",
                  "messages_field")
_BATCH_BYTES = 1 << 20  # a batch of documents sent to a worker: about this much text,
_BATCH_DOCUMENTS = 512  # or this many documents
_TOKENS_U16, _BYTES_ONE, _BYTES_U8, _ALL_TRAINED = 1, 2, 4, 8  # record flags
_HEADER = 3  # int32 words: domain, n, flags
_MARKS = (INDEX_FILE, "train.array_record", "validation.array_record")  # `overwrite` replaces

_Batch = tuple[list[str], list[Document], dict[str, int]]  # splits, documents, their domain ids


def encode_record(doc: TokenizedDocument) -> bytes:
    """One document as a record (the format in the module docstring)."""
    tokens, token_bytes = np.asarray(doc.tokens), np.asarray(doc.token_bytes)
    small = not tokens.size or (tokens.min() >= 0 and tokens.max() < 1 << 16)
    flags, parts = (_TOKENS_U16, [tokens.astype("<u2")]) if small else (0, [tokens.astype("<i4")])
    if np.all(token_bytes == 1):
        flags |= _BYTES_ONE
    elif not token_bytes.size or (token_bytes.min() >= 0 and token_bytes.max() < 1 << 8):
        flags |= _BYTES_U8
        parts.append(token_bytes.astype("<u1"))
    else:
        parts.append(token_bytes.astype("<i4"))
    if np.all(doc.trained):
        flags |= _ALL_TRAINED
    else:
        parts.append(np.packbits(np.asarray(doc.trained, bool)))
    header = np.array([doc.domain, tokens.size, flags], "<i4")
    return b"".join(part.tobytes() for part in (header, *parts))


def decode_record(data: bytes) -> TokenizedDocument:
    """A record back as a TokenizedDocument (int32 tokens and token_bytes, bool trained).

    Raises:
      ValueError: the record's size does not match its header.
    """
    domain, n, flags = (int(v) for v in np.frombuffer(data, "<i4", _HEADER))
    offset = 4 * _HEADER
    tokens_dtype = np.dtype("<u2" if flags & _TOKENS_U16 else "<i4")
    tokens = np.frombuffer(data, tokens_dtype, n, offset).astype(np.int32)
    offset += n * tokens_dtype.itemsize
    if flags & _BYTES_ONE:
        token_bytes = np.ones(n, np.int32)
    else:
        bytes_dtype = np.dtype("<u1" if flags & _BYTES_U8 else "<i4")
        token_bytes = np.frombuffer(data, bytes_dtype, n, offset).astype(np.int32)
        offset += n * bytes_dtype.itemsize
    if flags & _ALL_TRAINED:
        trained = np.ones(n, bool)
    else:
        packed = np.frombuffer(data, np.uint8, (n + 7) // 8, offset)
        trained = np.unpackbits(packed, count=n).astype(bool)
        offset += packed.size
    if offset != len(data):
        raise ValueError(f"a record of {len(data)} bytes whose header says {offset}")
    return TokenizedDocument(tokens, token_bytes, trained, domain)


def prepare(spec: DataSpec, out_dir: str | pathlib.Path, *, overwrite: bool = False,
            workers: int | None = None, progress: bool = True) -> dict:
    """Tokenizes the corpus of `spec` into ArrayRecord shards under `out_dir`.

    Args:
      spec: a text corpus ("stdlib", "files" or "jsonl"); its `validation_every` fixes the
        split, its `tokenizer` the tokens.
      out_dir: output directory, written whole or not at all (module docstring).
      overwrite: replace a prepared corpus in `out_dir` (once the new one is complete).
      workers: tokenizer processes; 0: this process; None: os.cpu_count() for a subword
        tokenizer, 0 for bytes (a process costs more than byte tokenizing saves; see
        benchmarks/results/prepare_cpu.json).
      progress: show a progress bar on a terminal (documents, and megabytes of text).

    Returns:
      The index written to `out_dir/index.json` (module docstring).

    Raises:
      ValueError: `spec.corpus` is "arrayrecord", the corpus is empty, or workers < 0.
      FileExistsError: `out_dir` already holds an index and `overwrite` is False (or, with
        `overwrite`, is a non-empty directory that is no prepared corpus).
      DirectoryBusyError, WriteError: as `atomic_directory` (another writer; a full disk).
    """
    if spec.corpus == "arrayrecord":
        raise ValueError("data.corpus='arrayrecord' is already prepared; prepare reads a text "
                         "corpus: 'stdlib', 'files' or 'jsonl'")
    if workers is not None and workers < 0:
        raise ValueError(f"workers={workers}; allowed: >= 0 (0: tokenize in this process)")
    out = pathlib.Path(out_dir).expanduser().resolve()
    if (out / INDEX_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out / INDEX_FILE} exists; pass overwrite=True (--overwrite)")
    with atomic_directory(out, overwrite=overwrite, what="prepared corpus",
                          marks=_MARKS) as directory:
        return _prepare_into(directory, spec, workers, progress)


def _prepare_into(out: pathlib.Path, spec: DataSpec, workers: int | None,
                  progress: bool) -> dict:
    """`prepare`'s work, into the (temporary) directory `out`; returns the index."""
    tokenizer = load_tokenizer(spec.tokenizer)
    if workers is None:
        workers = 0 if tokenizer.name == BYTES else os.cpu_count() or 1
    outline = read_table(spec, texts=False)  # first pass: names, domain ids and the split
    names = list(outline.domain_names)
    check_domain_selection(spec, names)
    batches = _batches(iter_documents(spec), outline.validation,
                       {name: i for i, name in enumerate(names)})
    bar = tqdm.tqdm(total=len(outline.select(spec)), unit="doc", dynamic_ncols=True,
                    disable=None if progress else True, desc="moejax-prepare")
    with bar:
        splits = _write(out, _encoded(batches, spec.tokenizer, tokenizer, workers), bar)
    index = {"format": FORMAT,
             "tokenizer": {"name": spec.tokenizer, "fingerprint": tokenizer.fingerprint},
             "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id,
             "bos_id": tokenizer.bos_id, "pad_id": tokenizer.pad_id, "domain_names": names,
             "source": {k: v for k, v in dataclasses.asdict(spec).items()
                        if k in _SOURCE_FIELDS},
             "splits": splits}
    text = json.dumps(index, indent=1) + "\n"
    (out / INDEX_FILE).write_text(text)
    return json.loads(text)  # as read back: lists, not tuples


def _write(out: pathlib.Path, encoded: Iterator[tuple[_Batch, list[tuple]]],
           bar: tqdm.tqdm) -> dict[str, dict]:
    """Writes each split's records in order; returns the splits' index entries."""
    writers = {split: _SplitWriter(out, split) for split in SPLITS}
    for (splits, _, _), records in encoded:
        for split, record in zip(splits, records, strict=True):
            writers[split].write(*record)
        bar.update(len(splits))
        megabytes = sum(w.bytes for w in writers.values()) / 1e6
        seconds = max(bar.format_dict["elapsed"], 1e-9)
        bar.set_postfix_str(f"{megabytes:.1f} MB, {megabytes / seconds:.1f} MB/s", refresh=False)
    return {split: writer.close() for split, writer in writers.items()}


def _batches(docs: Iterator[Document], validation: frozenset[str],
             domain_ids: Mapping[str, int]) -> Iterator[_Batch]:
    """The documents in order, in batches of about `_BATCH_BYTES` or `_BATCH_DOCUMENTS`."""
    splits, batch, size = [], [], 0
    for doc in docs:
        splits.append("validation" if doc.name in validation else "train")
        batch.append(doc)
        size += len(doc.text)
        if size >= _BATCH_BYTES or len(batch) >= _BATCH_DOCUMENTS:
            yield splits, batch, {d.domain: domain_ids[d.domain] for d in batch}
            splits, batch, size = [], [], 0
    if batch:
        yield splits, batch, {d.domain: domain_ids[d.domain] for d in batch}


def _encoded(batches: Iterator[_Batch], name: str, tokenizer: Tokenizer,
             workers: int) -> Iterator[tuple[_Batch, list[tuple]]]:
    """(batch, its `_encode_batch` records) in order: in `workers` processes, or here when
    workers is 0 or the corpus is one batch (a process would cost more than it saves)."""
    first = list(itertools.islice(batches, 2))
    batches = itertools.chain(first, batches)
    if workers == 0 or len(first) < 2:
        return ordered_map(_encode_batch, batches, setup=lambda: tokenizer)
    return ordered_map(_encode_batch, batches, setup=load_tokenizer, setup_args=(name,),
                       workers=workers)


def _encode_batch(tokenizer: Tokenizer, batch: _Batch) -> list[tuple[bytes, int, int, int]]:
    """[(record, tokens, bytes, trained tokens)] of each document of `batch` (in a worker)."""
    _, docs, domain_ids = batch
    return [(encode_record(doc), int(doc.tokens.size), int(doc.token_bytes.sum()),
             int(np.count_nonzero(doc.trained)), doc.domain)
            for doc in tokenize(tokenizer, docs, domain_ids)]


class _SplitWriter:
    """Appends one split's records to its ArrayRecord file, lengths and domains lists."""

    def __init__(self, out: pathlib.Path, split: str):
        self._out = out
        self._records, self._lengths_file = f"{split}.array_record", f"{split}_lengths.npy"
        self._domains_file = f"{split}_domains.npy"
        self._writer = ArrayRecordWriter(str(out / self._records), _WRITER_OPTIONS)
        self._lengths, self._domains = [], []
        self.bytes = self._trained = 0

    def write(self, record: bytes, tokens: int, nbytes: int, trained: int, domain: int) -> None:
        """Appends one `encode_record` record of `tokens` tokens covering `nbytes` bytes."""
        self._writer.write(record)
        self._lengths.append(tokens)
        self._domains.append(domain)
        self.bytes += nbytes
        self._trained += trained

    def close(self) -> dict:
        """Closes the file, writes the lengths and domains; returns the split's index entry."""
        self._writer.close()
        np.save(self._out / self._lengths_file, np.asarray(self._lengths, np.int64))
        np.save(self._out / self._domains_file, np.asarray(self._domains, np.int64))
        return {"records": self._records, "lengths": self._lengths_file,
                "domains": self._domains_file,
                "documents": len(self._lengths), "tokens": int(sum(self._lengths)),
                "bytes": self.bytes, "trained_tokens": self._trained}


def read_index(directory: str | pathlib.Path) -> dict:
    """The JSON index of a prepared directory; errors name `data.paths`.

    Raises:
      FileNotFoundError: no index.json in `directory`.
      ValueError: it cannot be read, or it is of another format (one written by an older
        moejax says to run moejax-prepare again).
    """
    path = pathlib.Path(directory).expanduser() / INDEX_FILE
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"data.paths: no {INDEX_FILE} in {directory!s}; write one with "
                                "`moejax-prepare --config ... --out DIR`") from err
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"data.paths: cannot read {path}: {err}") from err
    found = index.get("format")
    if found in _OLD_FORMATS:
        raise ValueError(f"data.paths: {directory!s} was written by an older moejax (format "
                         f"{found!r}, this one reads {FORMAT!r}); run moejax-prepare again to "
                         "rewrite it")
    if found != FORMAT:
        raise ValueError(f"data.paths: {path} has format {found!r}; this version reads "
                         f"{FORMAT!r}")
    return index


class RecordDocuments:
    """Documents of one prepared split, read on demand from its ArrayRecord file.

    Random access, safe from several threads (grain's reader threads).

    Attributes:
      lengths: int64 [M] token count of each document (EOS not included).
      domains: int64 [M] domain id of each document.
      index: the directory's index (`read_index`): tokenizer, vocab_size, eos_id, domain_names,
        per-split counts.
    """

    def __init__(self, directory: str | pathlib.Path, split: str):
        check_split(split)
        base = pathlib.Path(directory).expanduser().resolve()
        self.index = read_index(base)
        entry = self.index["splits"][split]
        self.lengths = np.load(base / entry["lengths"])
        self.domains = np.load(base / entry["domains"])
        self._path = str(base / entry["records"])
        self._source = grain.sources.ArrayRecordDataSource(self._path) if self.lengths.size else ()
        if len(self._source) != self.lengths.size:
            raise ValueError(f"data.paths: {self._path} holds {len(self._source)} records but "
                             f"{entry['lengths']} lists {self.lengths.size}; prepare it again")

    def __len__(self) -> int:
        return int(self.lengths.size)

    def document(self, index: int) -> TokenizedDocument:
        """Document `index` (0 <= index < len(self)): tokens int32 [n], token_bytes int32 [n],
        trained bool [n], domain id."""
        return decode_record(self._source[index])

    def __repr__(self) -> str:
        return f"RecordDocuments({self._path!r}, documents={len(self)})"
