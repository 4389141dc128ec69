"""Data stage 1, sources: the file helpers of the file-based sources.

`data.paths` (files or globs) -> sorted files, their machine-independent names, and reads whose
errors name `data.paths`. `open_input` / `read_input` decompress by suffix: `.gz` (gzip, the
standard library) and `.zst` / `.zstd` (zstd, the `zstandard` package, every frame); a file
whose content is not what its suffix says (compressed without the suffix, or not compressed
with it), or whose compressed data is corrupt or truncated, is a one-line ValueError naming the
file and the compression.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import pathlib
import zlib
from collections.abc import Iterator
from typing import BinaryIO

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_MAGIC = {"gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd"}
_SUFFIX = {"gzip": ".gz", "zstd": ".zst"}
_CHUNK = 1 << 20
_ZSTD_READ = 1 << 16  # compressed bytes per step (a 1 MiB step could inflate to gigabytes)


def expand_paths(patterns: tuple[str, ...]) -> list[pathlib.Path]:
    """Files named or matched by `patterns` (globs, `**` recursive), sorted and unique.

    Raises FileNotFoundError naming `data.paths` for a pattern that matches no file, and
    ValueError for a directory (pass a glob such as "dir/**/*.txt").
    """
    found = set()
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if glob.has_magic(expanded):
            matches = [p for p in glob.glob(expanded, recursive=True) if os.path.isfile(p)]
            if not matches:
                raise FileNotFoundError(f"data.paths: the glob {pattern!r} matches no file "
                                        f"(searched from {os.getcwd()})")
        elif os.path.isdir(expanded):
            raise ValueError(f"data.paths: {pattern!r} is a directory; give files or a glob "
                             f"such as {os.path.join(pattern, '**', '*.txt')!r}")
        elif not os.path.isfile(expanded):
            raise FileNotFoundError(f"data.paths: no file {pattern!r} "
                                    f"(searched from {os.getcwd()})")
        else:
            matches = [expanded]
        found.update(pathlib.Path(p).resolve() for p in matches)
    return sorted(found)


def relative_names(files: list[pathlib.Path]) -> list[str]:
    """Names relative to the deepest directory containing every file (posix separators)."""
    common = pathlib.Path(os.path.commonpath([f.parent for f in files]))
    return [f.relative_to(common).as_posix() for f in files]


def one_directory(paths: tuple[str, ...], corpus: str) -> pathlib.Path:
    """The one directory `data.paths` names (resolved), for `data.corpus=corpus`.

    Raises:
      ValueError: `paths` is not exactly one entry, or it is not a directory.
    """
    if len(paths) != 1:
        raise ValueError(f"data.paths={paths}; data.corpus={corpus!r} takes exactly one "
                         "directory")
    directory = pathlib.Path(paths[0]).expanduser().resolve()
    if not directory.is_dir():
        raise ValueError(f"data.paths: {paths[0]!r} is not a directory (data.corpus="
                         f"{corpus!r} reads one directory; searched from {os.getcwd()})")
    return directory


def read_bytes(path: pathlib.Path) -> bytes:
    """The file's bytes; an OSError becomes a ValueError naming `data.paths` and the file."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise ValueError(f"data.paths: cannot read {path}: {err}") from err


def compression(path: pathlib.Path) -> str | None:
    """"gzip", "zstd" or None (plain), by the file's suffix (`COMPRESSIONS`)."""
    return COMPRESSIONS.get(pathlib.Path(path).suffix.lower())


def read_input(path: pathlib.Path) -> bytes:
    """The file's bytes, decompressed by suffix; raises as `open_input`."""
    with open_input(path) as stream:
        return stream.read()


@contextlib.contextmanager
def open_input(path: pathlib.Path) -> Iterator[BinaryIO]:
    """The file as a binary stream (iterate it for lines), decompressed by suffix as it is read.

    Raises (also while the stream is read in the `with` block):
      ValueError: naming `data.paths`, the file and its compression: the file cannot be read,
        its content is not what its suffix says, or its compressed data is corrupt or truncated.
    """
    kind = compression(path)
    try:
        with open(path, "rb") as raw:
            _check_magic(path, kind, raw.read(4))
            raw.seek(0)
            yield raw if kind is None else _decompressing(raw, kind)
    except (OSError, EOFError, zlib.error) as err:
        if kind is None:
            raise ValueError(f"data.paths: cannot read {path}: {err}") from err
        raise ValueError(f"data.paths: {path} is not valid {kind} data (corrupt or truncated): "
                         f"{err}") from err


def _check_magic(path: pathlib.Path, kind: str | None, head: bytes) -> None:
    """ValueError unless the file's first bytes agree with the compression its suffix says."""
    if kind is not None and head and not head.startswith(_MAGIC[kind]):
        raise ValueError(f"data.paths: {path} is not {kind}-compressed although its name ends in "
                         f"{path.suffix} (it starts with {head!r})")
    found = [name for name, magic in _MAGIC.items() if head.startswith(magic)]
    if kind is None and found:
        raise ValueError(f"data.paths: {path} is {found[0]}-compressed but its name does not end "
                         f"in {_SUFFIX[found[0]]}; rename it to read it decompressed")


def _decompressing(raw: BinaryIO, kind: str) -> BinaryIO:
    if kind == "gzip":
        import gzip

        return gzip.GzipFile(fileobj=raw, mode="rb")
    return io.BufferedReader(_ZstdReader(raw), buffer_size=_CHUNK)


class _ZstdReader(io.RawIOBase):
    """A zstd stream's decompressed bytes, frame after frame; a truncated last frame raises
    EOFError and corrupt data OSError (zstandard's own reader ends a truncated frame silently).
    """

    def __init__(self, raw: BinaryIO):
        import zstandard  # only where a .zst file is read

        self._raw, self._errors = raw, zstandard.ZstdError
        self._context = zstandard.ZstdDecompressor()
        self._frame, self._in_frame = self._context.decompressobj(), False
        self._pending, self._at = memoryview(b""), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._at == len(self._pending):
            chunk = self._raw.read(_ZSTD_READ)
            if not chunk:
                if self._in_frame:
                    raise EOFError("the stream ends inside a zstd frame (truncated)")
                return 0
            self._pending, self._at = memoryview(self._feed(chunk)), 0
        count = min(len(buffer), len(self._pending) - self._at)
        buffer[:count] = self._pending[self._at:self._at + count]
        self._at += count
        return count

    def _feed(self, chunk: bytes) -> bytes:
        """Decompresses `chunk`, starting a new frame after each one that ends in it."""
        out = []
        while chunk:
            self._in_frame = True
            try:
                out.append(self._frame.decompress(chunk))
            except self._errors as err:
                raise OSError(str(err)) from err
            if not self._frame.eof:
                break
            chunk, self._in_frame = self._frame.unused_data, False
            self._frame = self._context.decompressobj()
        return b"".join(out)
