"""Data stage 1, sources: the file helpers of the "files" and "jsonl" sources.

`data.paths` (files or globs) -> sorted files, their machine-independent names, and reads whose
errors name `data.paths`.
"""

from __future__ import annotations

import glob
import os
import pathlib


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


def read_bytes(path: pathlib.Path) -> bytes:
    """The file's bytes; an OSError becomes a ValueError naming `data.paths` and the file."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise ValueError(f"data.paths: cannot read {path}: {err}") from err
