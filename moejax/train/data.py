"""Built-in corpus and byte-level batches.

The corpus is the running Python's standard library source (`*.py` under
`sysconfig.get_paths()["stdlib"]`, sorted), split into train and validation by a hash of
each file's relative path, tokenized as bytes (ids 0-255) with EOS between documents.
"""

from __future__ import annotations

import hashlib
import pathlib
import sysconfig

import numpy as np

PAD_ID, BOS_ID, EOS_ID = 256, 257, 258
VOCAB_SIZE = 259


def encode(text: str | bytes) -> np.ndarray:
    """Bytes of text as int32 token ids [N]."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return np.frombuffer(data, np.uint8).astype(np.int32)


def is_validation(relative_path: str, every: int = 20) -> bool:
    """Deterministic split: one file in `every` (by path hash) goes to validation."""
    digest = hashlib.sha256(relative_path.encode()).digest()
    return int.from_bytes(digest[:4], "little") % every == 0


def stdlib_files() -> list[pathlib.Path]:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)


def stdlib_stream(split: str, max_bytes: int | None = None) -> np.ndarray:
    """All documents of one split ("train" or "validation") as one token stream [N] int32."""
    if split not in ("train", "validation"):
        raise ValueError(f"split={split!r}; allowed: train, validation")
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    pieces, total = [], 0
    for path in stdlib_files():
        if is_validation(str(path.relative_to(root))) != (split == "validation"):
            continue
        pieces.extend([encode(path.read_bytes()), np.array([EOS_ID], np.int32)])
        total += pieces[-2].size + 1
        if max_bytes is not None and total >= max_bytes:
            break
    if not pieces:
        raise ValueError(f"the built-in corpus has no {split} documents under {root}")
    return np.concatenate(pieces)


def random_windows(stream: np.ndarray, batch_size: int, length: int, rng: np.random.Generator):
    """A batch [batch_size, length] of random windows of the stream."""
    if stream.size <= length:
        raise ValueError(f"corpus of {stream.size} tokens is shorter than seq_len + 1 = {length}")
    starts = rng.integers(0, stream.size - length, size=batch_size)
    return np.stack([stream[s:s + length] for s in starts])
