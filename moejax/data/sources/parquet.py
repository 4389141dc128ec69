"""Data stage 1, sources: "parquet", Parquet files named by `data.paths`.

One record per row, its columns read as `records.RecordReader` says (`data.text_field`, an
instruction record's `data.prompt_field` + `data.completion_field`, a chat under
`data.messages_field`, and `data.domain_field`); only those columns are read, a batch of rows
at a time, row group after row group. name = "<file name as for files>:<row>" (rows counted
from 0 across the file's row groups), domain = the row's `data.domain_field` when set,
otherwise the file's parent directory name. Documents are ordered by file name, then row.

Needs `pyarrow` (`pip install moejax[parquet]`), imported only when a parquet corpus is read.
"""

from __future__ import annotations

from collections.abc import Iterator

from moejax.data.sources.document import Document
from moejax.data.sources.paths import expand_paths, relative_names
from moejax.data.sources.records import RecordReader

_BATCH_ROWS = 1024


def documents(spec) -> Iterator[Document]:
    """The rows of the parquet files of `spec.paths` as documents, read as the iterator advances.

    Raises:
      ImportError: pyarrow is not installed (naming the extra `moejax[parquet]`).
      ValueError: one line naming the file: it is not parquet, or it lacks a column (naming the
        option); or naming the file and row: a value is null, not a string, or not UTF-8.
    """
    parquet = _pyarrow_parquet()
    reader = RecordReader.for_spec(spec)
    files = expand_paths(spec.paths)
    for name, path in zip(relative_names(files), files, strict=True):
        row = 0
        for batch in _batches(parquet, path, reader):
            for record in batch.to_pylist():
                yield reader.document(record, f"{name}:{row}", f"{path} row {row}",
                                      path.parent.name)
                row += 1


def describe(spec) -> str:
    """Where the documents come from, for errors."""
    return f"data.paths={spec.paths}"


def _pyarrow_parquet():
    try:
        import pyarrow.parquet
    except ImportError as err:
        raise ImportError("data.corpus='parquet' needs pyarrow: pip install 'moejax[parquet]'"
                          ) from err
    return pyarrow.parquet


def _batches(parquet, path, reader: RecordReader):
    """The file's record batches of `reader.columns` (ValueError naming the file and option)."""
    import pyarrow

    try:
        table = parquet.ParquetFile(path)
    except (OSError, pyarrow.ArrowException) as err:
        raise ValueError(f"data.paths: {path} is not a readable parquet file: {err}") from err
    found = table.schema_arrow.names
    for option, key in (*reader.text_fields, ("data.domain_field", reader.domain_field)):
        if key is not None and key not in found:
            raise ValueError(f"{option}={key!r}: {path} has no column {key!r} (found: {found})")
    try:
        yield from table.iter_batches(batch_size=_BATCH_ROWS, columns=list(reader.columns),
                                      use_threads=False)
    except (OSError, pyarrow.ArrowException) as err:
        raise ValueError(f"data.paths: {path} is not a readable parquet file: {err}") from err
