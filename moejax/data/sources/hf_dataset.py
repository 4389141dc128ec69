"""Data stage 1, sources: "hf_dataset", a Hugging Face `datasets` dataset saved with
`save_to_disk`.

`data.paths` is that one directory (one split: a saved `DatasetDict`'s split directory). One
record per row, its columns read as `records.RecordReader` says (`data.text_field`, an
instruction record's `data.prompt_field` + `data.completion_field`, a chat under
`data.messages_field`, and `data.domain_field`); only those columns are read, a batch of rows at
a time from the memory-mapped Arrow files. name = the row index (from 0) as a string, domain =
the row's `data.domain_field` when set, otherwise the directory's name.

Needs `datasets` (`pip install moejax[datasets]`), imported only when such a corpus is read.
"""

from __future__ import annotations

from collections.abc import Iterator

from moejax.data.sources.document import Document
from moejax.data.sources.paths import one_directory
from moejax.data.sources.records import RecordReader

_BATCH_ROWS = 1024


def documents(spec) -> Iterator[Document]:
    """The rows of the saved dataset `spec.paths[0]` as documents, read as the iterator advances.

    Raises:
      ImportError: datasets is not installed (naming the extra `moejax[datasets]`).
      ValueError: one line naming the directory: it is not a saved dataset, it is a
        DatasetDict, or it lacks a column (naming the option); or naming the directory and row:
        a value is null, not a string, or not UTF-8.
    """
    dataset, directory = _load(spec)
    reader = RecordReader.for_spec(spec)
    found = list(dataset.column_names)
    for option, key in (*reader.text_fields, ("data.domain_field", reader.domain_field)):
        if key is not None and key not in found:
            raise ValueError(f"{option}={key!r}: the dataset {directory} has no column {key!r} "
                             f"(found: {found})")
    columns = list(reader.columns)
    dataset = dataset.select_columns(columns)
    for start in range(0, len(dataset), _BATCH_ROWS):
        batch = dataset[start:start + _BATCH_ROWS]
        for offset, values in enumerate(zip(*(batch[c] for c in columns), strict=True)):
            row = start + offset
            yield reader.document(dict(zip(columns, values, strict=True)), str(row),
                                  f"the dataset {directory} row {row}", directory.name)


def describe(spec) -> str:
    """Where the documents come from, for errors."""
    return f"the dataset data.paths={spec.paths}"


def _load(spec):
    """(the Dataset with only the needed columns formatted as Python objects, its directory)."""
    try:
        import datasets
    except ImportError as err:
        raise ImportError("data.corpus='hf_dataset' needs datasets: pip install "
                          "'moejax[datasets]'") from err
    directory = one_directory(spec.paths, "hf_dataset")
    try:
        dataset = datasets.load_from_disk(str(directory))
    except (OSError, ValueError) as err:  # FileNotFoundError: not written by save_to_disk
        raise ValueError(f"data.paths: {directory} is not a dataset saved with save_to_disk: "
                         f"{str(err).splitlines()[0] if str(err) else err!r}") from err
    if isinstance(dataset, datasets.DatasetDict):
        raise ValueError(f"data.paths: {directory} holds a DatasetDict with splits "
                         f"{sorted(dataset)}; give one split's directory, such as "
                         f"{directory / sorted(dataset)[0]}")
    return dataset.with_format(None), directory

