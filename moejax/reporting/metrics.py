"""The metrics file: one writer (metrics.jsonl, optional TensorBoard) and one reader.

Names follow `train/...`-free flat keys in metrics.jsonl (`loss`, `val_loss`, `aux/lb`,
`routing/entropy`, `eval/routing/domain_nmi`, ...); TensorBoard gets every scalar and the mean
of every per-router list. Only process 0 writes.
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"


def to_python(metrics: dict) -> dict:
    """Device arrays -> floats / nested lists, ready for JSON."""
    return {k: np.asarray(v).tolist() if not isinstance(v, (str, list)) else v
            for k, v in metrics.items()}


class MetricsWriter:
    """Appends one JSON object per logged step to `<workdir>/metrics.jsonl`."""

    def __init__(self, workdir, *, tensorboard: bool = False):
        self.active = jax.process_index() == 0
        self.path = pathlib.Path(workdir) / METRICS_FILE
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

    Raises:
      FileNotFoundError: path does not exist.
      ValueError: a line is not a JSON object, or the file holds no rows.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path} (the trainer writes it to its workdir)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number} is not valid JSON: {err}") from err
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number} is not a JSON object")
        row.setdefault("step", len(rows) + 1)
        rows.append(row)
    if not rows:
        raise ValueError(f"metrics file {path} is empty: no logged steps")
    return rows
