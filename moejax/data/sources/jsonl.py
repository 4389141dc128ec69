"""Data stage 1, sources: "jsonl", JSON-lines files named by `data.paths`.

One object per non-blank line, the text under `data.text_field`; name = "<file name as for
files>:<line number>", domain = the object's `data.domain_field` when set, otherwise the file's
parent directory name. Documents are ordered by file name, then line number.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from moejax.data.sources.document import Document
from moejax.data.sources.paths import expand_paths, relative_names


def documents(spec) -> Iterator[Document]:
    """The lines of the JSONL files of `spec.paths` as documents, read as the iterator advances.

    Raises:
      ValueError: naming `data.paths` (a file cannot be read, a line is not JSON) or
        `data.text_field` / `data.domain_field` (a line lacks that string field).
    """
    files = expand_paths(spec.paths)
    for name, path in zip(relative_names(files), files, strict=True):
        try:
            with open(path, "rb") as lines:
                for number, line in enumerate(lines, start=1):
                    if line.strip():
                        yield _document(spec, f"{name}:{number}", line, path.parent.name)
        except OSError as err:
            raise ValueError(f"data.paths: cannot read {path}: {err}") from err


def describe(spec) -> str:
    """Where the documents come from, for errors."""
    return f"data.paths={spec.paths}"


def _document(spec, name: str, line: bytes, default_domain: str) -> Document:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"data.paths: {name} is not valid JSON: {err}") from err
    fields = {"data.text_field": spec.text_field}
    if spec.domain_field is not None:
        fields["data.domain_field"] = spec.domain_field
    values = {}
    for option, key in fields.items():
        value = record.get(key) if isinstance(record, dict) else None
        if not isinstance(value, str):
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"{option}={key!r}: {name} has no string field {key!r} "
                             f"(found: {keys})")
        values[option] = value
    domain = values.get("data.domain_field", default_domain)
    return Document(name, values["data.text_field"].encode("utf-8"), domain)
