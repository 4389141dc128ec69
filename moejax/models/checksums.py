"""Checkpoint integrity: `<step>/checksums.json`, the SHA-256 of every file of a step.

`Checkpointer` (train/checkpoint.py) writes it as soon as a step is on disk and verifies it
before restoring or exporting a step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib

CHECKSUMS = "checksums.json"


def _step_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != CHECKSUMS)


def _sha256(path: pathlib.Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_checksums(step_dir: pathlib.Path) -> None:
    """Writes `<step_dir>/checksums.json`: {relative path: SHA-256} of every file (atomically)."""
    sums = {str(p.relative_to(step_dir)): _sha256(p) for p in _step_files(step_dir)}
    partial = step_dir / (CHECKSUMS + ".tmp")
    partial.write_text(json.dumps(sums, indent=0, sort_keys=True))
    os.replace(partial, step_dir / CHECKSUMS)


def verify_checksums(step_dir: pathlib.Path) -> bool:
    """Checks a step's files against its checksums.json.

    Returns:
      True if verified; False if the step has no checksums.json (logged as a warning).

    Raises:
      ValueError: a file is missing, added or altered (names it).
    """
    listed = step_dir / CHECKSUMS
    if not listed.is_file():
        logging.getLogger(__name__).warning("checkpoint %s has no %s: restoring it unverified",
                                            step_dir, CHECKSUMS)
        return False
    sums = json.loads(listed.read_text())
    present = {str(p.relative_to(step_dir)) for p in _step_files(step_dir)}
    for name in sorted(present ^ set(sums)):
        raise ValueError(f"checksum mismatch: {name} is "
                         f"{'missing' if name in sums else 'not in ' + CHECKSUMS} (in {step_dir})")
    for name, digest in sums.items():
        if _sha256(step_dir / name) != digest:
            raise ValueError(f"checksum mismatch: {name} was altered (in {step_dir})")
    return True
