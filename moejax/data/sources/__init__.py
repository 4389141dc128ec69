"""Data stage 1, sources: the text corpora, one module each, all with one interface.

A source module gives

    documents(spec: DataSpec) -> Iterator[Document]
        the whole documents (before chunking, of every domain), sorted by name, read lazily
        where the source allows (files as the iterator reaches them);
    describe(spec: DataSpec) -> str
        where the documents come from, for errors ("data.paths=(...)").

`SOURCES` maps `data.corpus` to its module; `moejax.data.corpus` chunks, selects and splits
what a source yields. ("arrayrecord", prepared token shards, is read by `moejax.data.shards`.)
"""

from __future__ import annotations

import types

from moejax.data.sources import files, jsonl, stdlib
from moejax.data.sources.document import Document

SOURCES = types.MappingProxyType({"stdlib": stdlib, "files": files, "jsonl": jsonl})

__all__ = ["SOURCES", "Document"]
