"""The metrics writer's trackers: a row as trackers take it, TensorBoard, W&B (offline) and
MLflow (a file store under the workdir), resuming, and what a tracker's failure does.

W&B and MLflow are optional (`moejax[wandb]`, `moejax[mlflow]`): their tests are skipped where
they are not installed.
"""

import json
import logging
import pathlib
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from moejax.reporting import metrics, writers
from moejax.reporting.metrics import MetricsWriter, read_metrics

NAN = float("nan")
CONFIG = {"seed": 0, "train": {"steps": 3, "learning_rate": 0.003}}
ROW = {
    "loss": 2.5, "aux/lb": 0.25, "aux/lb/per_router": [0.1, 0.2],
    "routing/entropy": [1.0, 2.0], "routing/dead_experts": [1, 2],
    "routing/tokens_per_expert": [[1, 2, 3], [4, 5, 6]],
    "routing/pathway_entropy": [0.5],
    "eval/domain_loss": [1.5, NAN], "eval/domain_names": ["code", "math/proofs"],
    "data/mixture_patterns": ["web*"], "data/mixture_shares": [1.0],
}
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _rows(steps=(1, 2, 3)):
    return [{"loss": 3.0 - 0.5 * s, **{k: v for k, v in ROW.items() if k != "loss"}}
            for s in steps]


def _write(workdir, steps=(1, 2, 3), start=0, **trackers):
    writer = MetricsWriter(workdir, config=CONFIG, keep_through_step=start, **trackers)
    for step, row in zip(steps, _rows(steps), strict=True):
        writer.write(step, row)
    writer.close()


def test_a_row_names_each_entry_by_what_its_list_is_indexed_by():
    scalars, histograms = writers.expand({"step": 7, **ROW})
    assert scalars == {
        "loss": 2.5, "aux/lb": 0.25, "aux/lb/per_router": pytest.approx(0.15),
        "aux/lb/per_router/router_0": 0.1, "aux/lb/per_router/router_1": 0.2,
        "routing/entropy": 1.5, "routing/entropy/router_0": 1.0, "routing/entropy/router_1": 2.0,
        "routing/dead_experts": 3.0, "routing/dead_experts/router_0": 1.0,
        "routing/dead_experts/router_1": 2.0, "routing/tokens_per_expert": 3.5,
        "routing/pathway_entropy": 0.5, "routing/pathway_entropy/router_pair_0": 0.5,
        "eval/domain_loss": 1.5, "eval/domain_loss/code": 1.5,  # NaN: math was not seen
        "data/mixture_shares": 1.0, "data/mixture_shares/web_": 1.0}
    assert list(histograms) == ["routing/tokens_per_expert/router_0",
                                "routing/tokens_per_expert/router_1"]
    np.testing.assert_array_equal(histograms["routing/tokens_per_expert/router_1"], [4, 5, 6])
    assert metrics.axes("routing/transitions") == ("router_pair", "expert", "expert")
    assert metrics.axes("eval/routing/domain_nmi") == ("router",)
    assert metrics.axes("eval/some_evaluator/scores") == ("entry",)


def test_without_trackers_the_file_is_the_rows(tmp_path):
    (tmp_path / writers.IDS_FILE).write_text('{"wandb": "of-an-earlier-run"}')
    _write(tmp_path)  # a new run (step 0): nothing continues the earlier run's trackers
    expected = [{"step": s, **json.loads(json.dumps(r))} for s, r in zip((1, 2, 3), _rows())]
    text = (tmp_path / "metrics.jsonl").read_text()
    assert text == "".join(json.dumps(row) + "\n" for row in expected)
    assert not (tmp_path / writers.IDS_FILE).exists()


def _tensorboard_events(workdir) -> list:
    """(step, tag, value or 'histogram' or text) of every summary in workdir/tensorboard."""
    from tensorboardX.proto.event_pb2 import Event

    found = []
    for path in sorted((workdir / "tensorboard").glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):  # TFRecord: length (8), its CRC (4), the record, its CRC (4)
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 16 + length
            for value in event.summary.value:
                kind = value.WhichOneof("value")
                content = {"simple_value": value.simple_value, "histo": "histogram",
                           "tensor": value.tensor.string_val[0].decode()
                           if value.tensor.string_val else None}.get(kind)
                found.append((event.step, value.tag, content))
    return found


def test_tensorboard_has_a_tag_per_router_and_domain_and_the_config_once(tmp_path):
    _write(tmp_path, tensorboard=True)
    events = _tensorboard_events(tmp_path)
    scalars = {(step, tag): value for step, tag, value in events if isinstance(value, float)}
    assert scalars[(3, "loss")] == 1.5
    assert scalars[(2, "routing/entropy/router_1")] == 2.0
    assert scalars[(2, "routing/entropy")] == 1.5  # the mean, as before
    assert scalars[(1, "eval/domain_loss/code")] == 1.5
    assert (1, "eval/domain_loss/math_proofs") not in scalars  # NaN: not evaluated
    histograms = {(step, tag) for step, tag, value in events if value == "histogram"}
    assert (3, "routing/tokens_per_expert/router_0") in histograms
    texts = [(step, value) for step, tag, value in events if tag.startswith("config")]
    assert len(texts) == 1 and texts[0][0] == 0 and '"learning_rate": 0.003' in texts[0][1]


def test_wandb_offline_gets_the_rows_under_the_workdir(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    logged = []
    log = wandb.Run.log
    monkeypatch.setattr(wandb.Run, "log", lambda run, data, step=None, **kw: (
        logged.append((step, data)), log(run, data, step=step, **kw))[-1])
    _write(tmp_path, wandb="moejax-tests")
    run_id = json.loads((tmp_path / writers.IDS_FILE).read_text())["wandb"]
    (run_file,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    deadline = time.monotonic() + 30  # W&B's service process may still be writing the file
    while b"routing/entropy/router_1" not in run_file.read_bytes():
        assert time.monotonic() < deadline, run_file.read_bytes()[:200]
        time.sleep(0.1)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [step for step, _ in logged] == [row["step"] for row in rows]
    for (step, data), row in zip(logged, rows, strict=True):
        scalars, histograms = writers.expand(row)
        assert {k: v for k, v in data.items() if k not in histograms} == scalars
        assert isinstance(data["routing/tokens_per_expert/router_1"], wandb.Histogram)

    _write(tmp_path, steps=(3, 4), start=2, wandb="moejax-tests")  # a resume continues the run
    assert json.loads((tmp_path / writers.IDS_FILE).read_text())["wandb"] == run_id


def _mlflow_uri(tmp_path, monkeypatch) -> str:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 opts in to its file store
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "moejax-tests")
    return f"file:{tmp_path / 'mlruns'}"


def test_mlflow_file_store_gets_the_rows_params_and_config(tmp_path, monkeypatch):
    uri = _mlflow_uri(tmp_path, monkeypatch)
    from mlflow.tracking import MlflowClient

    _write(tmp_path, mlflow=uri)
    run_id = json.loads((tmp_path / writers.IDS_FILE).read_text())["mlflow"]
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == tmp_path.name
    assert client.get_experiment(run.info.experiment_id).name == "moejax-tests"
    assert run.data.params == {"seed": "0", "train.steps": "3", "train.learning_rate": "0.003"}
    # the file store keeps a metric per file: "/" -> "." (aux/lb is a metric and a prefix)
    history = client.get_metric_history(run_id, "routing.entropy.router_1")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 2.0), (3, 2.0)]
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [2.5, 2.0, 1.5]
    assert len(run.data.metrics) == len(writers.expand(read_metrics(
        tmp_path / "metrics.jsonl")[-1])[0])
    config = json.loads((pathlib.Path(run.info.artifact_uri.removeprefix("file:"))
                         / "config.json").read_text())
    assert config == CONFIG

    _write(tmp_path, steps=(3, 4), start=2, mlflow=uri)  # a resume continues the run
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3, 3, 4]
    assert client.get_run(run_id).info.status == "FINISHED"


class _Broken:
    """A tracker that fails at its second row."""

    def __init__(self, workdir, value, config, run_id, start):
        self.id, self.rows = None, []

    def write(self, step, scalars, histograms):
        if step == 2:
            raise ConnectionError("server went away\nsecond line")
        self.rows.append(step)

    def close(self):
        pass


def _with_kind(monkeypatch, open_fn):
    kind = writers.TrackerKind("Broken", "broken", "json", "broken", str, "a name", open_fn)
    monkeypatch.setattr(writers, "TRACKERS", writers.TRACKERS + (kind,))


def test_a_tracker_that_fails_while_training_is_warned_about_and_the_file_keeps_every_row(
        tmp_path, monkeypatch, caplog):
    _with_kind(monkeypatch, _Broken)
    with caplog.at_level(logging.WARNING):
        _write(tmp_path, broken="x")
    assert [row["step"] for row in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "train.broken: Broken failed at step 2: ConnectionError: server went away; it gets no "
        "more rows (metrics.jsonl keeps every row)",
        "train.broken: Broken stopped at step 2: ConnectionError: server went away; "
        "metrics.jsonl holds every row"]


def test_a_tracker_that_cannot_start_stops_the_run_before_any_row(tmp_path, monkeypatch):
    def refuse(*args):
        raise PermissionError("api_key not configured (no-tty)")

    _with_kind(monkeypatch, refuse)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
    with pytest.raises(ValueError, match=r"^train.broken='x': Broken could not start: "
                                         r"PermissionError: api_key not configured \(no-tty\)$"):
        MetricsWriter(tmp_path, keep_through_step=0, broken="x")
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "loss": 3.0}\n'


def test_a_missing_package_or_a_bad_value_is_one_line_naming_the_option(monkeypatch):
    writers.check_trackers({"tensorboard": False, "wandb": None, "mlflow": None})
    with pytest.raises(ValueError, match=r"^train.wandb=3; allowed: None or a W&B project name$"):
        writers.check_trackers({"wandb": 3})
    monkeypatch.setattr(writers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"^train.wandb='proj' needs wandb: "
                                         r"pip install 'moejax\[wandb\]'$"):
        writers.check_trackers({"wandb": "proj"})
    with pytest.raises(ValueError, match=r"^train.mlflow='http://h:5000' needs mlflow: "
                                         r"pip install 'moejax\[mlflow\]'$"):
        writers.check_trackers({"mlflow": "http://h:5000"})
    from moejax.train.config_files import load_config
    from moejax.train.specs import specs_from_config

    config = load_config(ROOT / "configs" / "tiny.py")  # the specs check it before any work
    config.train.tensorboard = True
    with pytest.raises(ValueError, match=r"^train.tensorboard=True needs tensorboardX: "):
        specs_from_config(config)


def test_importing_moejax_imports_no_tracker():
    code = ("import sys, moejax, moejax.reporting.metrics, moejax.reporting.writers, "
            "moejax.train.specs; bad = [m for m in ('wandb', 'mlflow', 'tensorboardX') "
            "if m in sys.modules]; sys.exit(f'imported {bad}' if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def _installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


@pytest.mark.slow
def test_a_tiny_run_logs_the_same_rows_to_every_tracker_and_reports(tmp_path, monkeypatch):
    """Trains configs/tiny.py with TensorBoard, and W&B (offline) and MLflow (file store)
    where installed, then writes the run report from its metrics.jsonl."""
    import jax

    from moejax.reporting.report import write_report
    from moejax.train.config_files import load_config
    from moejax.train.trainer import train_and_evaluate

    trackers = {"tensorboard": True}
    if _installed("wandb"):
        monkeypatch.setenv("WANDB_MODE", "offline")
        trackers["wandb"] = "moejax-tests"
    if _installed("mlflow"):
        trackers["mlflow"] = _mlflow_uri(tmp_path, monkeypatch)
    config = load_config(ROOT / "configs" / "tiny.py")
    config.train.update(steps=3, log_every=1, eval_every=2, checkpoint_every=3, progress=False,
                        report=False, async_checkpoint=False, eval_top1_disabled=False,
                        **trackers)
    with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats and int32 steps
        train_and_evaluate(config, tmp_path)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3]
    events = _tensorboard_events(tmp_path)
    logged = {tag for _, tag, value in events if isinstance(value, float)}
    assert {"loss", "learning_rate", "routing/entropy/router_1", "grad_norm"} <= logged
    (config_text,) = [value for _, tag, value in events if tag.startswith("config")]
    assert '"decay_steps": 3' in config_text  # the resolved config
    ids = json.loads((tmp_path / writers.IDS_FILE).read_text()) if len(trackers) > 1 else {}
    if "mlflow" in trackers:
        from mlflow.tracking import MlflowClient

        history = MlflowClient(tracking_uri=trackers["mlflow"]).get_metric_history(
            ids["mlflow"], "loss")
        assert [(m.step, m.value) for m in history] == [
            (row["step"], pytest.approx(row["loss"])) for row in rows]
    if "wandb" in trackers:
        assert list((tmp_path / "wandb").glob(f"offline-run-*-{ids['wandb']}/run-*.wandb"))

    text = write_report(tmp_path).read_text()
    for name in ("loss.png", "training.png", "entropy.png", "val_loss_domains.png"):
        assert f"(plots/{name})" in text
    assert "| learning rate (step 3) |" in text and "| gradient norm (step 3) |" in text
    assert "## Validation loss per domain" in text  # the stdlib corpus: a domain per module
