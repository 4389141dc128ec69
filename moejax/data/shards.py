"""Data stage 1b, pre-tokenized shards: write a text corpus as ArrayRecord files and read them back.

`prepare(spec, out_dir)` tokenizes a text corpus ("stdlib", "files" or "jsonl") once and writes,
for each split, one ArrayRecord file of documents plus a lengths array, and a JSON index:

    out_dir/index.json                  {"format", "vocab_size", "domain_names", "source", "splits"}
    out_dir/train.array_record          one record per document: int32 [1 + n] = [domain id, tokens]
    out_dir/train_lengths.npy           int64 [documents]: n of each record, for packing
    out_dir/validation.array_record     the same for the validation split
    out_dir/validation_lengths.npy

`corpus="arrayrecord"` with `paths=(out_dir,)` then packs sequences by random access to the
records, so memory grows with the number of documents, not with the number of tokens. The split
and the domain ids are the ones fixed at prepare time.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from moejax.data.corpus import (
    SPLITS,
    DataSpec,
    check_domain_selection,
    check_split,
    iter_documents,
    read_table,
)
from moejax.data.tokenizer import VOCAB_SIZE, encode

FORMAT = "moejax-arrayrecord/1"
INDEX_FILE = "index.json"
_WRITER_OPTIONS = "group_size:1"  # one record per chunk: cheap random access


def prepare(spec: DataSpec, out_dir: str | pathlib.Path, *, overwrite: bool = False) -> dict:
    """Tokenizes the corpus of `spec` into ArrayRecord shards under `out_dir`.

    Args:
      spec: a text corpus ("stdlib", "files" or "jsonl"); its `validation_every` fixes the split.
      out_dir: output directory, created if missing.
      overwrite: replace an existing prepared corpus in `out_dir`.

    Returns:
      The index written to `out_dir/index.json` (domain names, per-split document and token
      counts).

    Raises:
      ValueError: `spec.corpus` is "arrayrecord" or the corpus is empty.
      FileExistsError: `out_dir` already holds an index and `overwrite` is False.
    """
    if spec.corpus == "arrayrecord":
        raise ValueError("data.corpus='arrayrecord' is already prepared; prepare reads a text "
                         "corpus: 'stdlib', 'files' or 'jsonl'")
    out = pathlib.Path(out_dir).expanduser().resolve()
    if (out / INDEX_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out / INDEX_FILE} exists; pass overwrite=True (--overwrite)")
    outline = read_table(spec, texts=False)  # first pass: names, domain ids and the split
    names = list(outline.domain_names)
    check_domain_selection(spec, names)
    out.mkdir(parents=True, exist_ok=True)
    domain_ids = {name: i for i, name in enumerate(names)}
    writers = {split: _SplitWriter(out, split) for split in SPLITS}
    for doc in iter_documents(spec):  # last pass: one document in memory at a time
        split = "validation" if doc.name in outline.validation else "train"
        writers[split].write(encode(doc.text), domain_ids[doc.domain])
    splits = {split: writer.close() for split, writer in writers.items()}
    index = {"format": FORMAT, "vocab_size": VOCAB_SIZE, "domain_names": names,
             "source": {k: v for k, v in dataclasses.asdict(spec).items()
                        if k in ("corpus", "paths", "text_field", "domain_field",
                                 "validation_every", "chunk_bytes")},
             "splits": splits}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n")
    return index


class _SplitWriter:
    """Appends one split's documents to its ArrayRecord file and lengths list."""

    def __init__(self, out: pathlib.Path, split: str):
        self._out = out
        self._records, self._lengths_file = f"{split}.array_record", f"{split}_lengths.npy"
        self._writer = ArrayRecordWriter(str(out / self._records), _WRITER_OPTIONS)
        self._lengths = []

    def write(self, tokens: np.ndarray, domain_id: int) -> None:
        """tokens: int32 [n] of one document."""
        record = np.concatenate([np.array([domain_id], np.int32), tokens.astype(np.int32)])
        self._writer.write(record.tobytes())
        self._lengths.append(tokens.size)

    def close(self) -> dict:
        """Closes the file, writes the lengths; returns the split's index entry."""
        self._writer.close()
        np.save(self._out / self._lengths_file, np.asarray(self._lengths, np.int64))
        return {"records": self._records, "lengths": self._lengths_file,
                "documents": len(self._lengths), "tokens": int(sum(self._lengths))}


def read_index(directory: str | pathlib.Path) -> dict:
    """The JSON index of a prepared directory; errors name `data.paths`."""
    path = pathlib.Path(directory).expanduser() / INDEX_FILE
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"data.paths: no {INDEX_FILE} in {directory!s}; write one with "
                                "`moejax-prepare --config ... --out DIR`") from err
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"data.paths: cannot read {path}: {err}") from err
    if index.get("format") != FORMAT:
        raise ValueError(f"data.paths: {path} has format {index.get('format')!r}; "
                         f"this version reads {FORMAT!r}")
    return index


class RecordDocuments:
    """Documents of one prepared split, read on demand from its ArrayRecord file.

    Attributes:
      lengths: int64 [M] token count of each document (EOS not included).
    """

    def __init__(self, directory: str | pathlib.Path, split: str):
        check_split(split)
        base = pathlib.Path(directory).expanduser().resolve()
        entry = read_index(base)["splits"][split]
        self.lengths = np.load(base / entry["lengths"])
        self._path = str(base / entry["records"])
        self._source = grain.sources.ArrayRecordDataSource(self._path) if self.lengths.size else ()
        if len(self._source) != self.lengths.size:
            raise ValueError(f"data.paths: {self._path} holds {len(self._source)} records but "
                             f"{entry['lengths']} lists {self.lengths.size}; prepare it again")

    def __len__(self) -> int:
        return int(self.lengths.size)

    def document(self, index: int) -> tuple[np.ndarray, int]:
        """(tokens int32 [n], domain id) of document `index`."""
        record = np.frombuffer(self._source[index], np.int32)
        return record[1:], int(record[0])

    def __repr__(self) -> str:
        return f"RecordDocuments({self._path!r}, documents={len(self)})"
