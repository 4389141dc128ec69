"""The metrics file: its schema (the metric names, how each list is reduced and what its
entries are), one writer (metrics.jsonl, then the trackers of writers.py) and the readers.

A row is one logged step: {"step": int, name: value, ...}, a value a number or a list (one per
router, router pair or domain). The names below are the one home of every key that a writer
(train/step.py, train/trainer.py) and a reader (the run report, plots, experiments) share:
flat keys (`loss`, `val_loss`), `aux/<loss>`, `routing/<metric>` (the last logged training
batch) and `eval/...` (the last evaluation). Wherever rows are summarised (TensorBoard, the
run report, the suites' final numbers and curves) a list becomes one number by its key's
reduction in `REDUCTIONS`. Only process 0 writes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pathlib
from types import MappingProxyType

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"

# --- The metric names (docs/methods.md section 6) ---
STEP = "step"
LOSS = "loss"  # train LM loss, nats / target token (the trained targets with data.loss_on)
TRAINED_TOKENS = "trained_tokens"  # targets the loss read this step (data.loss_on="completion")
TOTAL_LOSS = "total_loss"  # LM loss plus the weighted regularizers
GRAD_NORM = "grad_norm"
AUX = "aux/"  # prefix: each regularizer, aux/<name> and aux/<name>/per_router [R]
TOKENS_PER_S = "tokens_per_s"  # over the logging interval's training steps (compile excluded)
TFLOPS_PER_DEVICE = "tflops_per_device"  # model FLOPs per second per device, same steps
MFU = "mfu"  # tflops_per_device / the device's peak (absent where the peak is unknown)
STEP_MS = "step_ms"  # median data + step time since the run (re)started
TIME_COMPILE_S = "time/compile_s"  # the run's first step (compiles the train step), seconds
TIME_EVAL_S = "time/eval_s"  # evaluation seconds since the run (re)started
TIME_CHECKPOINT_S = "time/checkpoint_s"  # checkpoint-save seconds since the run (re)started
GOODPUT = "goodput"  # training-step seconds / wall seconds since the run (re)started
EVAL = "eval/"  # prefix: eval/<name>/<metric> of config.evals' evaluators (train/evaluators.py)
LEARNING_RATE = "learning_rate"
ROUTING = "routing/"  # prefix: the routing of the last logged training batch
ROUTING_ENTROPY = ROUTING + "entropy"  # [R]
ROUTING_TOPK_MASS = ROUTING + "topk_mass"  # [R]
ROUTING_SPECIALIZATION = ROUTING + "specialization"  # [R], with recorded cosines only
ROUTING_LOAD_CV = ROUTING + "load_cv"  # [R]
ROUTING_DEAD_EXPERTS = ROUTING + "dead_experts"  # [R] int
ROUTING_DROPPED_FRACTION = ROUTING + "dropped_fraction"  # [R]
ROUTING_PATHWAY_ENTROPY = ROUTING + "pathway_entropy"  # [R - 1]
ROUTING_TRANSITIONS = ROUTING + "transitions"  # [R - 1, E, E] counts
ROUTING_TOKENS_PER_EXPERT = ROUTING + "tokens_per_expert"  # [R, E]
VAL_LOSS = "val_loss"  # nats per evaluated target token
VAL_BITS_PER_BYTE = "val_bits_per_byte"  # bits per UTF-8 byte those tokens cover
VAL_PERPLEXITY = "val_perplexity"  # per token
EVAL_TOKENS = "eval/tokens"  # target tokens the evaluation read
EVAL_BYTES = "eval/bytes"  # UTF-8 bytes they cover
TOP1_DISABLED = "_top1_disabled"  # suffix: evaluated with each token's top-1 expert disabled
VAL_LOSS_TOP1_DISABLED = VAL_LOSS + TOP1_DISABLED
EVAL_DOMAIN_LOSS = "eval/domain_loss"  # [domains], NaN for a domain the batches do not hold
EVAL_DOMAIN_TOKENS = "eval/domain_tokens"  # [domains] int
EVAL_DOMAIN_NAMES = "eval/domain_names"  # [domains] str
EVAL_ROUTING_DOMAIN_COUNTS = "eval/routing/domain_counts"  # [R, E, domains]
EVAL_ROUTING_DOMAIN_NMI = "eval/routing/domain_nmi"  # [R]
EVAL_ROUTING_DROPPED_FRACTION = "eval/routing/dropped_fraction"  # [R]
EVAL_ROUTING_DROPPED_FRACTION_TOP1_DISABLED = EVAL_ROUTING_DROPPED_FRACTION + TOP1_DISABLED
DATA_MIXTURE_PATTERNS = "data/mixture_patterns"  # [patterns] str, with data.mixture only
DATA_MIXTURE_TARGETS = "data/mixture_targets"  # [patterns] the weights, normalised
DATA_MIXTURE_SHARES = "data/mixture_shares"  # [patterns] realised training token shares

# --- How a list value becomes one number ---
MEAN = "mean"  # over routers (the default)
TOTAL = "total"  # summed over routers
MEAN_SEEN = "mean_seen"  # over the entries that are not NaN (domains the evaluation saw)
REDUCTIONS = MappingProxyType({ROUTING_DEAD_EXPERTS: TOTAL, EVAL_DOMAIN_LOSS: MEAN_SEEN})


def reduction(key: str) -> str:
    """The reduction of `key`'s lists: its `REDUCTIONS` entry (a configured evaluator's
    `eval/<name>/<metric>` reduces as the default set's `eval/<metric>`), else MEAN."""
    if key in REDUCTIONS:
        return REDUCTIONS[key]
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == EVAL.rstrip("/"):
        return REDUCTIONS.get(f"{parts[0]}/{parts[2]}", MEAN)
    return MEAN


def reduce_values(key: str, values) -> np.ndarray:
    """values [N, ...]: N logged values of `key` -> [N] float64, each reduced over its entries
    by `reduction(key)`; MEAN_SEEN gives NaN where every entry is NaN."""
    values = np.asarray(values, np.float64).reshape(len(values), -1)
    how = reduction(key)
    if how == TOTAL:
        return values.sum(-1)
    if how == MEAN_SEEN:
        seen = ~np.isnan(values)
        count = seen.sum(-1)
        total = np.where(seen, values, 0.0).sum(-1)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return values.mean(-1)


def reduced(key: str, value):
    """One number for a logged value of `key`: a scalar as it is, a list reduced by
    `reduce_values` (an int total stays an int); None where the value holds no number (text,
    an empty list, a MEAN_SEEN list of NaN gaps only)."""
    values = np.asarray(value)
    if values.dtype.kind not in "fiu" or values.size == 0:
        return None
    if values.ndim == 0:
        return values.item()
    number = float(reduce_values(key, values[None])[0])
    if np.isnan(number) and reduction(key) == MEAN_SEEN:
        return None
    return int(number) if reduction(key) == TOTAL and values.dtype.kind in "iu" else number


# --- What a list's entries are (its axes, outermost first): trackers name each entry ---
ROUTER, ROUTER_PAIR, EXPERT, DOMAIN, PATTERN, ENTRY = (
    "router", "router_pair", "expert", "domain", "pattern", "entry")
AXES = MappingProxyType({
    ROUTING_PATHWAY_ENTROPY: (ROUTER_PAIR,),
    ROUTING_TRANSITIONS: (ROUTER_PAIR, EXPERT, EXPERT),
    ROUTING_TOKENS_PER_EXPERT: (ROUTER, EXPERT),
    EVAL_DOMAIN_LOSS: (DOMAIN,),
    EVAL_DOMAIN_TOKENS: (DOMAIN,),
    EVAL_ROUTING_DOMAIN_COUNTS: (ROUTER, EXPERT, DOMAIN),
    DATA_MIXTURE_TARGETS: (PATTERN,),
    DATA_MIXTURE_SHARES: (PATTERN,),
})
AXIS_NAMES = MappingProxyType({DOMAIN: EVAL_DOMAIN_NAMES, PATTERN: DATA_MIXTURE_PATTERNS})


def axes(key: str) -> tuple:
    """The axes of `key`'s lists: its `AXES` entry, else (ROUTER,) for the per-router keys
    (`routing/...`, `eval/routing/...`, `aux/<name>/per_router`), else (ENTRY,)."""
    if key in AXES:
        return AXES[key]
    per_router = key.startswith((ROUTING, "eval/" + ROUTING)) or (
        key.startswith(AUX) and key.endswith("/per_router"))
    return (ROUTER,) if per_router else (ENTRY,)


# --- The readers of logged rows ---
def last_value(rows: list[dict], key: str):
    """(value, row) of the last row that has key; (None, None) when no row has it."""
    for row in reversed(rows):
        if key in row:
            return row[key], row
    return None, None


def series(rows: list[dict], key: str):
    """(steps [N], values [N, ...] float64) over the rows whose key has the last value's shape.

    Returns (None, None) when no row has key.
    """
    last, _ = last_value(rows, key)
    if last is None:
        return None, None
    shape = np.shape(last)
    picked = [row for row in rows if key in row and np.shape(row[key]) == shape]
    steps = np.asarray([row[STEP] for row in picked])
    return steps, np.asarray([row[key] for row in picked], dtype=np.float64)


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
        if isinstance(row, dict) and row.get(STEP, 0) <= step:
            kept.append(json.dumps(row) + "\n")
        else:
            dropped += 1
    if dropped:
        partial = path.with_name(path.name + ".tmp")
        partial.write_text("".join(kept))
        os.replace(partial, path)
    return dropped


def _append_whole(fd: int, data: bytes) -> None:
    """Appends `data` with one `write` (O_APPEND); a short or failed write (a full disk) is
    undone, so the file never ends in a cut row.

    Raises:
      OSError: the write failed (ENOSPC for a short write); the file is as it was.
    """
    size = os.fstat(fd).st_size
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (wrote {written} of "
                                        f"{len(data)} bytes)")
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise


class MetricsWriter:
    """The one writer of a run's metrics: appends one JSON object per logged step to
    `<workdir>/metrics.jsonl`, then hands the same row to the trackers turned on
    (TensorBoard, W&B, MLflow: `writers.py`, which says how a tracker's failure is handled).

    A row is written whole or not at all (one `write` of the whole line, undone if cut short),
    so a full disk leaves the row missing, never cut; `write` then raises the OSError.
    `keep_through_step`: the step the run starts from; rows after it are dropped first
    (`keep_rows_through`), and the trackers continue from it. `trackers`: {option: value} of
    `writers.TRACKERS` (e.g. wandb="project"), `config`: the resolved config they record.

    Raises:
      ValueError: a tracker's package is missing or it could not start (one line naming its
        option); nothing was written.
    """

    def __init__(self, workdir, *, tensorboard: bool = False, keep_through_step: int = 0,
                 config: dict | None = None, **trackers):
        self.active = jax.process_index() == 0
        self.path = pathlib.Path(workdir) / METRICS_FILE
        self._trackers = []
        if self.active:  # started first: one that cannot start leaves metrics.jsonl as it was
            from moejax.reporting.writers import open_trackers

            self._trackers = open_trackers(workdir, {"tensorboard": tensorboard, **trackers},
                                           config, keep_through_step)
            dropped = keep_rows_through(self.path, keep_through_step)
            if dropped:
                logging.getLogger(__name__).warning(
                    "%s: dropped %d rows after step %d (the run continues from there)",
                    self.path, dropped, keep_through_step)
        self._fd = (os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                    if self.active else None)

    @classmethod
    def for_run(cls, workdir, train, config: dict | None, *, keep_through_step: int = 0):
        """The writer of a training run: the trackers `train` (a TrainSpec) turns on."""
        from moejax.reporting.writers import tracker_options

        options = tracker_options(train)
        return cls(workdir, tensorboard=options.pop("tensorboard"), config=config,
                   keep_through_step=keep_through_step, **options)

    def write(self, step: int, metrics: dict) -> dict:
        """Writes {"step": step, **metrics} whole, then to the trackers; returns the JSON-ready
        row. A tracker's failure is a warning (`writers.write_trackers`), never an error.

        Raises:
          OSError: the row could not be written (a full disk); the file holds no part of it.
        """
        row = {STEP: int(step), **to_python(metrics)}
        if not self.active:
            return row
        _append_whole(self._fd, (json.dumps(row) + "\n").encode())
        if self._trackers:
            from moejax.reporting.writers import write_trackers

            write_trackers(self._trackers, row)
        return row

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._trackers:
            from moejax.reporting.writers import close_trackers

            close_trackers(self._trackers)
            self._trackers = []


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
        row.setdefault(STEP, len(rows) + 1)
        rows.append(row)
    if not rows:
        raise ValueError(f"metrics file {path} is empty: no logged steps")
    return rows
