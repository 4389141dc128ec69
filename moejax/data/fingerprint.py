"""Data stage 1, provenance: a fingerprint of a corpus's input files, to notice on resume that
the data changed under a checkpoint.

`data_fingerprint(spec)` maps each input file's machine-independent name to "size:sha256" (the
file's bytes as stored, compressed or not, streamed in 1 MiB chunks):

- "files", "jsonl", "parquet": the files `data.paths` names or matches, named as the sources
  name them (relative to the deepest directory holding them all);
- "hf_dataset", "arrayrecord": every file under the one directory, named relative to it;
- "stdlib": nothing (`{}`): it is the running Python's standard library.

`changed_files(old, new)` lists what differs between two fingerprints.
"""

from __future__ import annotations

import hashlib
import pathlib

from moejax.data.sources.paths import expand_paths, one_directory, relative_names

_CHUNK = 1 << 20
_DIRECTORY_CORPORA = ("hf_dataset", "arrayrecord")

__all__ = ["changed_files", "data_fingerprint", "file_fingerprint", "input_files"]


def input_files(spec) -> dict[str, pathlib.Path]:
    """{name: path} of every input file of `spec`'s corpus, sorted by name ({} for "stdlib").

    Raises:
      FileNotFoundError, ValueError: as the sources (`data.paths` matches no file, ...).
    """
    if spec.corpus == "stdlib":
        return {}
    if spec.corpus in _DIRECTORY_CORPORA:
        directory = one_directory(spec.paths, spec.corpus)
        files = sorted(p for p in directory.rglob("*") if p.is_file())
        return {p.relative_to(directory).as_posix(): p for p in files}
    files = expand_paths(spec.paths)
    return dict(zip(relative_names(files), files, strict=True))


def file_fingerprint(path: pathlib.Path) -> str:
    """"<size in bytes>:<sha256 hex>" of the file's bytes (read in 1 MiB chunks)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return f"{size}:{digest.hexdigest()}"


def data_fingerprint(spec) -> dict[str, str]:
    """{name: "size:sha256"} of every input file of `spec`'s corpus ({} for "stdlib").

    Raises:
      FileNotFoundError, ValueError: as `input_files`; ValueError naming `data.paths` and the
        file when one cannot be read.
    """
    out = {}
    for name, path in input_files(spec).items():
        try:
            out[name] = file_fingerprint(path)
        except OSError as err:
            raise ValueError(f"data.paths: cannot read {path}: {err}") from err
    return out


def changed_files(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """What differs from fingerprint `old` to `new`, sorted by name: "<name> (added)",
    "<name> (removed)", "<name> (changed)"; empty when they are equal."""
    out = []
    for name in sorted(old.keys() | new.keys()):
        if name not in old:
            out.append(f"{name} (added)")
        elif name not in new:
            out.append(f"{name} (removed)")
        elif old[name] != new[name]:
            out.append(f"{name} (changed)")
    return out
