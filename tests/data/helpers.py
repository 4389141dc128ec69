"""Shared by the data tests: a small files corpus with three domains."""

import pathlib

import numpy as np

DOMAINS = ("alpha", "beta", "gamma")
NUM_FILES = 12


def write_corpus(root: pathlib.Path, num_files: int = NUM_FILES, seed: int = 0,
                 sizes: tuple[int, int] = (5, 90)) -> str:
    """Random printable files of `sizes` bytes (low, high) under root/<domain>/, the domains
    taken in turn; returns a recursive glob over them."""
    rng = np.random.default_rng(seed)
    for i in range(num_files):
        folder = root / DOMAINS[i % len(DOMAINS)]
        folder.mkdir(parents=True, exist_ok=True)
        size = int(rng.integers(*sizes))
        (folder / f"doc{i:02d}.txt").write_bytes(rng.integers(32, 127, size, np.uint8).tobytes())
    return str(root / "**" / "*.txt")
