"""Data stage 1, sources: "files", text files named by `data.paths`.

`data.paths` are files or globs (`**` allowed); name = the path relative to the deepest
directory containing every match, domain = the file's parent directory name. `.gz` and `.zst`
files are read decompressed (`paths.open_input`). A file with a NUL byte is binary, not text:
skipped with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from moejax.data.sources.document import Document
from moejax.data.sources.paths import expand_paths, read_input, relative_names


def documents(spec) -> Iterator[Document]:
    """The text files of `spec.paths` as documents, sorted by name, each read as the iterator
    reaches it (one file in memory at a time).

    Raises:
      ValueError: naming `data.paths` and the file: it cannot be read, or it is not what its
        compression suffix says (`paths.open_input`).
    """
    files = expand_paths(spec.paths)
    for name, path in zip(relative_names(files), files, strict=True):
        text = read_input(path)
        if b"\0" in text:
            logging.getLogger(__name__).warning(
                "data.paths: skipping %s: it holds NUL bytes (a binary file, not text)", path)
            continue
        yield Document(name, text, path.parent.name)


def describe(spec) -> str:
    """Where the documents come from, for errors."""
    return f"data.paths={spec.paths}"
