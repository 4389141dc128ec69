"""Shared by the data tests: a small files corpus with three domains."""

import pathlib

import numpy as np

from moejax.data.tokenizer import train_bpe

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


def write_tokenizer(directory: pathlib.Path, vocab_size: int = 300,
                    texts: tuple[str, ...] = ()) -> pathlib.Path:
    """A byte-level BPE (`tokenizer.train_bpe`) trained on `texts` (or a built-in sample), its
    specials "<|endoftext|>" (EOS) and "<|pad|>"; returns `directory`."""
    sample = texts or ("def main():\n    return 0\n", "The café served crème brûlée. " * 3,
                       "import numpy as np\nx = np.zeros(3)\n", "Ünïcödé 日本語 text 🙂 ok")
    return train_bpe(list(sample) * 20, directory, vocab_size, pad="<|pad|>")
