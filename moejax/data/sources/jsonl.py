"""Data stage 1, sources: "jsonl", JSON-lines files named by `data.paths`.

One object per non-blank line (`.gz` / `.zst` files read decompressed, `paths.open_input`);
its text is made of its fields as `records.RecordReader` says (`data.text_field`, an
instruction record's `data.prompt_field` + `data.completion_field`, or a chat under
`data.messages_field`); name = "<file name as for files>:<line number>" (from 1), domain = the
object's `data.domain_field` when set, otherwise the file's parent directory name. Documents
are ordered by file name, then line number.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from moejax.data.sources.document import Document
from moejax.data.sources.paths import expand_paths, open_input, relative_names
from moejax.data.sources.records import RecordReader


def documents(spec) -> Iterator[Document]:
    """The lines of the JSONL files of `spec.paths` as documents, read as the iterator advances.

    Raises:
      ValueError: one line, naming the file and line and `data.paths` (a file cannot be read or
        decompressed, a line is not UTF-8 or not JSON) or the field's option (`data.text_field`,
        ...: a line lacks that string field).
    """
    reader = RecordReader.for_spec(spec)
    files = expand_paths(spec.paths)
    for name, path in zip(relative_names(files), files, strict=True):
        with open_input(path) as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    record = _record(line, f"{path} line {number}", first=number == 1)
                    yield reader.document(record, f"{name}:{number}", f"{path} line {number}",
                                          path.parent.name)


def describe(spec) -> str:
    """Where the documents come from, for errors."""
    return f"data.paths={spec.paths}"


def _record(line: bytes, where: str, *, first: bool):
    """The JSON value of one line (a byte-order mark allowed on the first)."""
    try:
        text = line.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"data.paths: {where} is not valid UTF-8: {err}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"data.paths: {where} is not valid JSON: {err}") from err
