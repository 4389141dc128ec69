"""Trackers: where the rows of metrics.jsonl also go (TensorBoard, Weights & Biases, MLflow).

`MetricsWriter` (metrics.py) appends each row to metrics.jsonl, then hands the same row to every
tracker the run turns on: `TRACKERS` holds one entry per kind (its `train.*` option, package,
pip extra and how to open it). A row reaches a tracker as `expand(row)`: every number, each
list reduced to one number under its own key (`metrics.reduced`, as the report does) and one
entry per router / router pair / domain / pattern under `<key>/<entry>` (`metrics.AXES`), e.g.
`routing/entropy/router_3`, `eval/domain_loss/code`; an entry that is itself a list (tokens
per expert of one router, one router pair's transitions) is a histogram, which TensorBoard and
W&B draw and MLflow, which has none, leaves out. The run's resolved config goes to each tracker
once per (re)start: a TensorBoard text summary `config`, the W&B run config, MLflow params and
`config.json`. A resumed run continues the same W&B / MLflow run (their ids are kept in
`<workdir>/trackers.json`); TensorBoard drops the events the interrupted run logged after the
restored step.

Failures. metrics.jsonl is the record: it is written first, and its failure stops the run.
- A tracker whose package is missing is one ValueError naming the option when the specs are
  built (`check_trackers`, before any work), e.g. "train.wandb='proj' needs wandb: pip install
  'moejax[wandb]'".
- A tracker that cannot start (no W&B login, an unreachable MLflow server) is one ValueError
  naming the option before the first step; metrics.jsonl is untouched.
- A tracker that fails while training logs one warning naming it, the step and the error, and
  gets no further rows; training goes on and metrics.jsonl keeps every row (the warning is
  repeated when the run ends).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import pathlib
import re
import time
from collections.abc import Callable

import numpy as np

from moejax.options import flat_config
from moejax.reporting import metrics as schema

IDS_FILE = "trackers.json"  # {kind: run id}: the W&B / MLflow run a resumed run continues
TENSORBOARD_DIR = "tensorboard"
MLFLOW_EXPERIMENT = "moejax"  # unless MLFLOW_EXPERIMENT_NAME names another
_MLFLOW_BATCH = 1000  # metrics per log_batch request (MLflow's limit)
_MLFLOW_PARAMS = 100  # params per request (MLflow's limit)
_MLFLOW_PARAM_CHARS = 6000  # longest param value MLflow keeps


def _log():
    return logging.getLogger(__name__)


# --- A row as trackers take it ---
def _label(text) -> str:
    """An entry name fit for a tag in every tracker (MLflow allows `[\\w.\\- /:]`)."""
    return re.sub(r"[^\w.\- ]", "_", str(text)) or "_"


def entry_names(key: str, row: dict, count: int) -> list[str]:
    """The `count` entries of `key`'s list: the names the row gives its axis (domains,
    mixture patterns), else `<axis>_<i>` (`router_3`)."""
    axis = schema.axes(key)[0]
    names = row.get(schema.AXIS_NAMES.get(axis, ""))
    if isinstance(names, list) and len(names) == count:
        return [_label(name) for name in names]
    return [f"{axis}_{i}" for i in range(count)]


def expand(row: dict) -> tuple[dict, dict]:
    """(scalars {tag: float}, histograms {tag: float64 array}) of one row (the module doc);
    text and the step are left out, and so are NaN entries (a domain the evaluation did not
    see) but not a NaN reduction."""
    scalars, histograms = {}, {}
    for key, value in row.items():
        try:
            values = np.asarray(value)
        except ValueError:  # a ragged list: no tracker form
            continue
        if key == schema.STEP or values.dtype.kind not in "fiu" or values.size == 0:
            continue
        number = schema.reduced(key, value)
        if number is not None:
            scalars[key] = float(number)
        if values.ndim:
            _add_entries(key, row, values.astype(np.float64), scalars, histograms)
    return scalars, histograms


def _add_entries(key, row, values, scalars, histograms) -> None:
    """`<key>/<entry>` of each entry of values [N, ...]: a number, or the finite values of a
    list as a histogram; an entry with no finite value is left out."""
    for name, entry in zip(entry_names(key, row, len(values)), values, strict=True):
        entry = np.asarray(entry)
        finite = entry[np.isfinite(entry)]
        if finite.size and entry.ndim == 0:
            scalars[f"{key}/{name}"] = float(entry)
        elif finite.size:
            histograms[f"{key}/{name}"] = finite


def _config_text(config: dict) -> str:
    return json.dumps(config, indent=2, sort_keys=True, default=str)


# --- The trackers: open(workdir, value, config, run_id, start) -> an object with `id`,
# `write(step, scalars, histograms)` and `close()` ---
class _TensorBoard:
    """`<workdir>/tensorboard` event files (tensorboardX)."""

    def __init__(self, workdir: pathlib.Path, value, config: dict, run_id, start: int):
        from tensorboardX import SummaryWriter

        # purge_step: TensorBoard drops what the interrupted run logged after the restored step
        self.writer = SummaryWriter(str(workdir / TENSORBOARD_DIR),
                                    purge_step=start + 1 if start else None)
        text = "\n".join("    " + line for line in _config_text(config).splitlines())
        self.writer.add_text("config", text, start)  # indented: a Markdown code block
        self.writer.flush()
        self.id = None

    def write(self, step: int, scalars: dict, histograms: dict) -> None:
        for tag, number in scalars.items():
            self.writer.add_scalar(tag, number, step)
        for tag, values in histograms.items():
            self.writer.add_histogram(tag, values, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandB:
    """A Weights & Biases run of project `value`, its files under `<workdir>/wandb`; W&B's own
    variables choose the rest (WANDB_MODE=offline, WANDB_ENTITY, WANDB_API_KEY)."""

    def __init__(self, workdir: pathlib.Path, value, config: dict, run_id, start: int):
        import wandb

        self._histogram = wandb.Histogram
        self.run = wandb.init(project=value, dir=str(workdir), name=workdir.name, id=run_id,
                              resume="allow" if run_id else None, reinit="create_new",
                              settings=wandb.Settings(console="off", quiet=True))
        self.run.config.update(config, allow_val_change=True)
        self.id = self.run.id

    def write(self, step: int, scalars: dict, histograms: dict) -> None:
        logged = {**scalars, **{tag: self._histogram(v) for tag, v in histograms.items()}}
        self.run.log(logged, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    """An MLflow run at tracking URI `value` in experiment MLFLOW_EXPERIMENT_NAME ("moejax");
    params (the flat config) are logged when the run is created, `config.json` at each start.
    MLflow's file store keeps one file per metric, so a name cannot also be a folder (`aux/lb`
    and `aux/lb/per_router`): there every "/" of a tag becomes "." (`routing.entropy.router_3`)."""

    def __init__(self, workdir: pathlib.Path, value, config: dict, run_id, start: int):
        from mlflow.tracking import MlflowClient
        from mlflow.utils.uri import is_local_uri

        self.client = MlflowClient(tracking_uri=value)
        self.file_store = is_local_uri(value)  # a `file:` URI or a path
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
        else:
            run_id = self._create(workdir.name, config)
        self.id = run_id
        self.client.log_dict(run_id, config, "config.json")

    def _create(self, name: str, config: dict) -> str:
        from mlflow.entities import Param

        experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME", MLFLOW_EXPERIMENT)
        experiment = self.client.get_experiment_by_name(experiment_name)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(experiment_name))
        run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
        params = [Param(key, str(value)[:_MLFLOW_PARAM_CHARS])
                  for key, value in sorted(flat_config(config).items())]
        for first in range(0, len(params), _MLFLOW_PARAMS):
            self.client.log_batch(run_id, params=params[first:first + _MLFLOW_PARAMS])
        return run_id

    def write(self, step: int, scalars: dict, histograms: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        logged = [Metric(tag.replace("/", ".") if self.file_store else tag, number, now, step)
                  for tag, number in scalars.items()]
        for first in range(0, len(logged), _MLFLOW_BATCH):
            self.client.log_batch(self.id, metrics=logged[first:first + _MLFLOW_BATCH])

    def close(self) -> None:
        self.client.set_terminated(self.id)


@dataclasses.dataclass(frozen=True)
class TrackerKind:
    """One kind of tracker: `train.<option>` turns it on (a true value), `package` must be
    importable (`pip install 'moejax[<extra>]'`), `allowed` describes the option's values."""

    name: str
    option: str
    package: str
    extra: str
    value_type: type
    allowed: str
    open: Callable


TRACKERS = (
    TrackerKind("TensorBoard", "tensorboard", "tensorboardX", "tensorboard", bool,
                "True or False", _TensorBoard),
    TrackerKind("W&B", "wandb", "wandb", "wandb", str, "None or a W&B project name", _WandB),
    TrackerKind("MLflow", "mlflow", "mlflow", "mlflow", str,
                "None or an MLflow tracking URI", _MLflow),
)


# --- Choosing, opening and feeding the trackers ---
def _requested(options: dict) -> list[tuple[TrackerKind, object]]:
    """(kind, value) of each tracker `options` ({option: value}) turns on; an option that is
    not a tracker's, or a value of the wrong type, raises ValueError naming it."""
    kinds = {kind.option: kind for kind in TRACKERS}
    unknown = sorted(set(options) - set(kinds))
    if unknown:
        raise ValueError(f"unknown tracker options {unknown}; allowed: {sorted(kinds)}")
    chosen = []
    for option, value in options.items():
        kind = kinds[option]
        if value is None or value is False:
            continue
        if not isinstance(value, kind.value_type) or value == "":
            raise ValueError(f"train.{option}={value!r}; allowed: {kind.allowed}")
        chosen.append((kind, value))
    return chosen


def tracker_options(train) -> dict:
    """{option: value} of every tracker kind, read from a TrainSpec."""
    return {kind.option: getattr(train, kind.option, None) for kind in TRACKERS}


def check_trackers(options: dict) -> None:
    """Checks each tracker option and that the package of each one turned on is installed.

    Raises:
      ValueError: one line naming the option, e.g. "train.wandb='proj' needs wandb: pip
        install 'moejax[wandb]'".
    """
    for kind, value in _requested(options):
        if importlib.util.find_spec(kind.package) is None:
            raise ValueError(f"train.{kind.option}={value!r} needs {kind.package}: "
                             f"pip install 'moejax[{kind.extra}]'")


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _read_ids(workdir: pathlib.Path, start: int) -> dict:
    """The run ids a resumed run continues ({} for a run that starts at step 0)."""
    path = workdir / IDS_FILE
    if not start or not path.is_file():
        return {}
    try:
        ids = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return ids if isinstance(ids, dict) else {}


def _write_ids(workdir: pathlib.Path, ids: dict) -> None:
    path = workdir / IDS_FILE
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(ids, sort_keys=True) + "\n")
    os.replace(partial, path)


def open_trackers(workdir, options: dict, config: dict | None, start: int) -> list:
    """Starts each tracker `options` turns on; [] when none is.

    Args:
      workdir: the run's directory.
      options: {option: value}, e.g. `tracker_options(train)`.
      config: the resolved config (JSON-ready), written to each tracker once.
      start: the step the run starts from (0: a new run; else the trackers continue).

    Raises:
      ValueError: a tracker could not start (or its package is missing); one line naming its
        option. The trackers started before it are closed.
    """
    check_trackers(options)
    workdir = pathlib.Path(workdir)
    ids, opened = _read_ids(workdir, start), []
    for kind, value in _requested(options):
        try:
            tracker = kind.open(workdir, value, config or {}, ids.get(kind.option), start)
        except Exception as error:  # noqa: BLE001 - any tracker error becomes one line
            close_trackers(opened)
            raise ValueError(f"train.{kind.option}={value!r}: {kind.name} could not start: "
                             f"{_one_line(error)}") from error
        opened.append(_Running(kind, tracker))
        if tracker.id is not None:
            ids[kind.option] = tracker.id
    if ids:
        _write_ids(workdir, ids)
    elif not start:  # a new run continues no earlier run's trackers
        (workdir / IDS_FILE).unlink(missing_ok=True)
    return opened


@dataclasses.dataclass
class _Running:
    """A started tracker; `failed` holds the step and error that stopped it."""

    kind: TrackerKind
    tracker: object
    failed: str | None = None

    def fail(self, what: str, error: Exception) -> None:
        self.failed = f"{what}: {_one_line(error)}"
        _log().warning("train.%s: %s failed at %s; it gets no more rows (metrics.jsonl keeps "
                       "every row)", self.kind.option, self.kind.name, self.failed)


def write_trackers(trackers: list, row: dict) -> None:
    """Hands `row` (a metrics.jsonl row) to each tracker still working; one that raises is
    warned about once and skipped from then on (the module doc)."""
    working = [running for running in trackers if running.failed is None]
    if not working:
        return
    scalars, histograms = expand(row)
    for running in working:
        try:
            running.tracker.write(row[schema.STEP], scalars, histograms)
        except Exception as error:  # noqa: BLE001 - a tracker never stops training
            running.fail(f"step {row[schema.STEP]}", error)


def close_trackers(trackers: list) -> None:
    """Closes each tracker (an error closing a working one is a warning) and repeats the
    failures of the run, so the end of the log names them."""
    for running in trackers:
        try:
            running.tracker.close()
        except Exception as error:  # noqa: BLE001 - closing never hides the run's result
            if running.failed is None:
                running.fail("closing", error)
                continue
        if running.failed is not None:
            _log().warning("train.%s: %s stopped at %s; metrics.jsonl holds every row",
                           running.kind.option, running.kind.name, running.failed)
