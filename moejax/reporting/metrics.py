"""The metrics file: one writer (metrics.jsonl, optional TensorBoard) and one reader.

Names follow `train/...`-free flat keys in metrics.jsonl (`loss`, `val_loss`, `aux/lb`,
`routing/entropy`, `eval/routing/domain_nmi`, ...); TensorBoard gets every scalar and the mean
of every per-router or per-domain list (NaN entries, domains an evaluation did not see, left
out). Only process 0 writes.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"


def to_python(metrics: dict) -> dict:
    """Device arrays -> floats / nested lists, ready for JSON."""
    return {k: np.asarray(v).tolist() if not isinstance(v, (str, list)) else v
            for k, v in metrics.items()}


def _parsed_lines(text: str):
    """(line number, row or None) for each non-blank line; None where it is not JSON."""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError:
                yield number, None


def keep_rows_through(path: pathlib.Path, step: int) -> int:
    """Rewrites the metrics file with only its rows of steps <= `step` (atomically).

    A resumed run continues from its restored step, so rows written after that step by the
    interrupted run, and a line cut off by a kill, are dropped: every step appears once.

    Returns:
      The number of lines dropped.
    """
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for _, row in _parsed_lines(path.read_text()):
        if isinstance(row, dict) and row.get("step", 0) <= step:
            kept.append(json.dumps(row) + "\n")
        else:
            dropped += 1
    if dropped:
        partial = path.with_name(path.name + ".tmp")
        partial.write_text("".join(kept))
        os.replace(partial, path)
    return dropped


class MetricsWriter:
    """Appends one JSON object per logged step to `<workdir>/metrics.jsonl`.

    `keep_through_step`: the step the run starts from; rows after it are dropped first
    (`keep_rows_through`).
    """

    def __init__(self, workdir, *, tensorboard: bool = False, keep_through_step: int = 0):
        self.active = jax.process_index() == 0
        self.path = pathlib.Path(workdir) / METRICS_FILE
        if self.active:
            dropped = keep_rows_through(self.path, keep_through_step)
            if dropped:
                logging.getLogger(__name__).warning(
                    "%s: dropped %d rows after step %d (the run continues from there)",
                    self.path, dropped, keep_through_step)
        self._file = self.path.open("a") if self.active else None
        self._tensorboard = None
        if tensorboard and self.active:
            try:
                from tensorboardX import SummaryWriter
            except ImportError as error:
                raise ImportError("train.tensorboard=True needs tensorboardX: "
                                  "pip install 'moejax[tensorboard]'") from error
            self._tensorboard = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

    def write(self, step: int, metrics: dict) -> dict:
        """Writes {"step": step, **metrics}; returns the JSON-ready row."""
        row = {"step": int(step), **to_python(metrics)}
        if not self.active:
            return row
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tensorboard is not None:
            for name, value in row.items():
                values = np.asarray(value)
                if values.ndim and values.dtype.kind == "f":  # per-domain lists hold NaN gaps
                    values = values[~np.isnan(values)]
                if name != "step" and values.dtype.kind in "fiu" and values.size:
                    self._tensorboard.add_scalar(name, float(values.mean()), step)
            self._tensorboard.flush()
        return row

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def read_metrics(path) -> list[dict]:
    """The logged rows of a metrics.jsonl file, in order; rows without "step" get their number.

    A last line cut off (a run killed while writing it) is skipped with a warning.

    Raises:
      FileNotFoundError: path does not exist.
      ValueError: a line other than the last is not a JSON object, or the file holds no rows.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path} (the trainer writes it to its workdir)")
    text = path.read_text()
    lines = list(_parsed_lines(text))
    rows = []
    for number, row in lines:
        if row is None and number == lines[-1][0] and not text.endswith("\n"):
            logging.getLogger(__name__).warning("%s:%d is cut off (a killed run?): skipped",
                                                path, number)
            continue
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number} is not a JSON object")
        row.setdefault("step", len(rows) + 1)
        rows.append(row)
    if not rows:
        raise ValueError(f"metrics file {path} is empty: no logged steps")
    return rows
