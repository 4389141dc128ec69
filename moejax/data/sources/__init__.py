"""Data stage 1, sources: the text corpora, one module each, all with one interface.

A source module gives

    documents(spec: DataSpec) -> Iterator[Document]
        the whole documents (before chunking, of every domain), sorted by name, read lazily
        where the source allows (files as the iterator reaches them);
    describe(spec: DataSpec) -> str
        where the documents come from, for errors ("data.paths=(...)").

`SOURCES` maps `data.corpus` to its module; `moejax.data.corpus` chunks, selects and splits
what a source yields. ("arrayrecord", prepared token shards, is read by `moejax.data.shards`.)
`RECORD_SOURCES` are those whose documents are records with named fields (`records.py`: the
text, prompt/completion or chat fields and `data.domain_field`). "parquet" needs pyarrow and
"hf_dataset" needs datasets, each imported only when such a corpus is read.
"""

from __future__ import annotations

import types

from moejax.data.sources import files, hf_dataset, jsonl, parquet, stdlib
from moejax.data.sources.document import Document

SOURCES = types.MappingProxyType({"stdlib": stdlib, "files": files, "jsonl": jsonl,
                                  "parquet": parquet, "hf_dataset": hf_dataset})
RECORD_SOURCES = ("jsonl", "parquet", "hf_dataset")

__all__ = ["RECORD_SOURCES", "SOURCES", "Document"]
