"""Data stage 1, sources: "stdlib", the running Python's standard library.

Every `*.py` under `sysconfig.get_paths()["stdlib"]` (site-packages excluded); name = the path
relative to that root, domain = the top-level package, or the file stem for a top-level module.
`data.paths` must be empty.
"""

from __future__ import annotations

import functools
import pathlib
import sysconfig
from collections.abc import Iterator

from moejax.data.sources.document import Document
from moejax.data.sources.paths import read_bytes


def root() -> pathlib.Path:
    """The standard library's directory."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def documents(spec) -> Iterator[Document]:
    """The standard library's modules as documents, sorted by name; `spec` is not read."""
    return iter(_all_documents(str(root())))


def describe(spec) -> str:
    """Where the documents come from, for errors."""
    return f"the standard library at {root()}"


@functools.lru_cache(maxsize=1)
def _all_documents(base: str) -> tuple[Document, ...]:
    """All `*.py` documents under `base` (site-packages excluded), sorted by name.

    Cached per process (about 30 MB): the standard library does not change while we run.
    """
    top = pathlib.Path(base)
    docs = []
    for path in top.rglob("*.py"):
        relative = path.relative_to(top)
        if "site-packages" in relative.parts:
            continue
        domain = relative.parts[0] if len(relative.parts) > 1 else path.stem
        docs.append(Document(relative.as_posix(), read_bytes(path), domain))
    return tuple(sorted(docs))
