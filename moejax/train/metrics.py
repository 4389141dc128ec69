"""One metrics writer: metrics.jsonl (always) and TensorBoard event files (optional).

Names follow `train/...`-free flat keys in metrics.jsonl (`loss`, `val_loss`, `aux/lb`,
`routing/entropy`, `eval/routing/domain_nmi`, ...); TensorBoard gets every scalar and the mean
of every per-router list. Only process 0 writes.
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np


def to_python(metrics: dict) -> dict:
    """Device arrays -> floats / nested lists, ready for JSON."""
    return {k: np.asarray(v).tolist() if not isinstance(v, (str, list)) else v
            for k, v in metrics.items()}


class MetricsWriter:
    """Appends one JSON object per logged step to `<workdir>/metrics.jsonl`."""

    def __init__(self, workdir, *, tensorboard: bool = False):
        self.active = jax.process_index() == 0
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
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
