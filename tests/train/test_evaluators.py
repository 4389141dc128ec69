"""Evaluators in training (`config.evals`) and the run's clock: throughput over the logging
interval's steps only, compile / evaluation / checkpoint time and goodput."""

import json
import pathlib

import numpy as np
import pytest

from moejax.train import evaluators, run_data
from moejax.train.accounting import RunClock
from moejax.train.specs import specs_from_config
from moejax.train.trainer import train_and_evaluate
from tests.train.helpers import ROOT, metrics_rows, tiny_config

TOY_TASKS = ROOT / "tests" / "evaluation" / "lm_eval_task"  # offline lm-eval tasks


def _evals(**evals):
    config = tiny_config()
    for name, options in evals.items():
        config.evals[name] = options
    return specs_from_config(config).evals


def test_empty_evals_is_the_default_set_and_kind_default_names_it():
    config = tiny_config(eval_top1_disabled=True, eval_every=7)
    default = specs_from_config(config).evals
    assert [(e.kind, e.every, e.options["batches"]) for e in default] == [
        ("validation", 7, 1), ("routing", 7, 1), ("top1_disabled", 7, 1)]
    assert default == evaluators.default_set(config.train)
    named = _evals(d=dict(kind="default"))  # tiny_config: no top-1 test, eval_every 100
    assert [(e.kind, e.keys) for e in named] == [(e.kind, e.keys) for e in default[:2]]
    assert [e.every for e in _evals(d=dict(kind="default", every=3))] == [3, 3]


@pytest.mark.parametrize("options, error", [
    (dict(kind="perplexity"), r"config\.evals\.x\.kind='perplexity'; allowed: validation, "
                              "heldout, top1_disabled, routing, lm_eval, default"),
    (dict(kind="validation", paths="a.txt"), r"config\.evals\.x: unknown option\(s\) paths for "
                                             r"kind='validation'; allowed: every, batches"),
    (dict(kind="routing", every=0), r"config\.evals\.x\.every=0; allowed: an integer >= 1"),
    (dict(kind="validation", batches=1.5), r"config\.evals\.x\.batches=1\.5; allowed"),
    (dict(kind="heldout"), r"config\.evals\.x\.paths=None; allowed: a file, a glob"),
    (dict(kind="heldout", paths="no/such/*.txt"),
     r"config\.evals\.x\.paths: the glob 'no/such/\*\.txt' matches no file"),
    (dict(kind="heldout", paths="x.txt", corpus="stdlib"),
     r"config\.evals\.x\.corpus='stdlib'; allowed: files, jsonl, parquet, hf_dataset"),
    (dict(kind="heldout", paths="x.txt", domain_by="dir"),
     r"config\.evals\.x\.domain_by='dir'; allowed: file, source"),
    (dict(kind="heldout", paths="x.txt", domain_field="lang"),
     r"config\.evals\.x\.domain_field='lang' is read by the record corpora"),
    (dict(kind="heldout", paths="x.txt", stride=17),  # tiny: train.seq_len 16
     r"config\.evals\.x\.stride=17; allowed: an integer in \[1, 16\], or None"),
    (dict(kind="heldout", paths="x.txt", window=8, stride=9),
     r"config\.evals\.x\.stride=9; allowed: an integer in \[1, 8\]"),
    (dict(kind="heldout", paths="x.txt", batches=2),
     r"config\.evals\.x: unknown option\(s\) batches for kind='heldout'; allowed: every, "
     "paths, corpus, text_field, domain_field, domain_by, window, stride, batch_size"),
    (dict(kind="lm_eval"), r"config\.evals\.x\.tasks=None; allowed: a task name"),
    (dict(kind="lm_eval", tasks="t", include_path="no/such/dir"),
     r"config\.evals\.x\.include_path='no/such/dir'; allowed: None or a directory"),
])
def test_a_bad_evaluator_is_one_line_before_any_work(options, error):
    with pytest.raises(ValueError, match=error):
        _evals(x=options)


def test_heldout_documents_are_read_once_as_moejax_eval_reads_them(tmp_path):
    """run_data.read_heldout: moejax-eval's heldout_documents with the evaluator's options
    (domain_by "source" by default); files without text are named before the first step."""
    config = tiny_config()
    config.evals.held = dict(kind="heldout", paths=_heldout_files(tmp_path / "held"))
    docs = run_data.read_heldout(specs_from_config(config))["held"]
    assert [(d.domain, d.text.decode()) for d in docs] == sorted(HELDOUT_TEXTS.items())
    (tmp_path / "empty.txt").write_text("")
    config.evals.held = dict(kind="heldout", paths=str(tmp_path / "empty.txt"))
    with pytest.raises(ValueError, match=r"config\.evals\.held\.paths=\('.*empty\.txt',\) "
                                         "hold no text"):
        run_data.read_heldout(specs_from_config(config))


def test_lm_eval_without_lm_eval_installed_is_named(monkeypatch):
    monkeypatch.setattr(evaluators, "_importable", lambda module: module != "lm_eval")
    with pytest.raises(ValueError, match=r"config\.evals\.mmlu\.kind='lm_eval' needs the "
                                          r"lm-eval package \(pip install lm-eval\)"):
        _evals(mmlu=dict(kind="lm_eval", tasks=("mmlu",)))


def test_run_clock_rates_cover_the_interval_s_training_steps_only():
    """A fake clock: a 10 s compiling step, 0.5 s steps, a 3 s evaluation, a 2 s save and a
    0.25 s step; tokens_per_s is 1000 tokens over each interval's own steps (the first without
    the compiling step), goodput the steps' share of the wall time."""
    now = [100.0]
    clock = RunClock(tokens_per_step=1000, flops_per_token=6e9, peak=None,
                     clock=lambda: now[0])

    def spend(part, seconds):
        since = clock.now()
        now[0] += seconds
        clock.add(part, since)

    now[0] += 4.0  # start-up: data, model
    spend("compile", 10.0)
    assert clock.row().keys() == {"time/compile_s", "time/eval_s", "time/checkpoint_s",
                                  "goodput"}  # an interval of the compiling step only
    for _ in range(2):
        spend("step", 0.5)
    spend("eval", 3.0)
    row = clock.row()
    assert row["tokens_per_s"] == 2000.0 and row["step_ms"] == 500.0
    assert row["tflops_per_device"] > 0 and "mfu" not in row  # no peak known
    spend("checkpoint", 2.0)
    spend("step", 0.25)  # this interval's own step: 4000 tokens/s, not the run's average
    row = clock.row()
    assert row["tokens_per_s"] == 4000.0
    assert (row["time/compile_s"], row["time/eval_s"], row["time/checkpoint_s"]) == (10, 3, 2)
    assert row["goodput"] == pytest.approx(1.25 / (4 + 10 + 1 + 3 + 2 + 0.25))


def test_loss_metrics_are_moejax_eval_s_rates_of_the_sums():
    """One formula (moejax.evaluation.perplexity.rates): nats per token, bits per UTF-8 byte,
    per-token perplexity; NaN (not 0) where nothing was scored."""
    sums = dict(loss_sum=30.0, tokens=12.0, bytes=40.0, domain_loss_sum=np.array([30.0, 0.0]),
                domain_tokens=np.array([12.0, 0.0]), domain_names=["a", "b"])
    out = evaluators.loss_metrics(sums)
    assert (out["loss"], out["bits_per_byte"], out["perplexity"]) == (
        30.0 / 12.0, 30.0 / np.log(2.0) / 40.0, np.exp(30.0 / 12.0))
    assert (out["tokens"], out["bytes"], list(out["domain_tokens"])) == (12, 40, [12, 0])
    assert out["domain_loss"][0] == 2.5 and np.isnan(out["domain_loss"][1])
    empty = evaluators.loss_metrics({**sums, "loss_sum": 0.0, "tokens": 0.0, "bytes": 0.0})
    assert all(np.isnan(empty[k]) for k in ("loss", "bits_per_byte", "perplexity"))


HELDOUT_TEXTS = {"prose": "The cat sat on the mat. Ünïcödé 日本語 " * 20,
                 "code": "def f(x):\n    return x + 1\n" * 30}


def _heldout_files(root: pathlib.Path) -> str:
    for domain, text in HELDOUT_TEXTS.items():
        (root / domain).mkdir(parents=True)
        (root / domain / "a.txt").write_text(text)
    return str(root / "*" / "*.txt")


def test_configured_evaluators_run_at_their_cadence_beside_the_default_set(tmp_path, capsys):
    """default (every train.eval_every: the last step), heldout files of two domains every
    step, validation every 2nd step; the start-of-run lines; tokens_per_s agrees with step_ms
    (data + step: both exclude compilation and evaluation)."""
    config = tiny_config(steps=4, log_every=2, eval_every=100)
    config.evals.update(dict(
        default=dict(kind="default"),
        held=dict(kind="heldout", paths=_heldout_files(tmp_path / "heldout"), every=1),
        val=dict(kind="validation", every=2)))
    train_and_evaluate(config, tmp_path / "run")
    rows = {row["step"]: row for row in metrics_rows(tmp_path / "run")}
    assert sorted(rows) == [1, 2, 3, 4]  # logged: every step with an evaluation
    assert [s for s in rows if "val_loss" in rows[s]] == [4]
    assert [s for s in rows if "eval/val/loss" in rows[s]] == [2, 4]
    last = rows[4]
    assert last["eval/val/loss"] == last["val_loss"]  # the same pass of the same batches
    assert last["eval/held/domain_names"] == ["code", "prose"]
    nbytes = sum(len(text.encode()) for text in HELDOUT_TEXTS.values())
    tokens = nbytes  # the byte tokenizer: every token of every document once, no EOS
    assert last["eval/held/tokens"] == tokens == sum(last["eval/held/domain_tokens"])
    assert last["eval/held/bytes"] == nbytes
    assert last["eval/held/bits_per_byte"] == pytest.approx(
        last["eval/held/loss"] * tokens / np.log(2) / last["eval/held/bytes"])
    assert not any(key.startswith("eval/held/routing") for key in last)
    for step in (2, 4):  # tokens_per_s of the interval's steps, step_ms their median
        implied = config.train.batch_size * config.train.seq_len / rows[step]["step_ms"] * 1e3
        assert 1 / 3 < rows[step]["tokens_per_s"] / implied < 3, rows[step]
    assert last["time/eval_s"] > 0 and last["time/compile_s"] > 0 and last["goodput"] < 1
    lines = capsys.readouterr().out.splitlines()
    for start in ("devices: ", "mesh: data 1, fsdp 1, expert 1, tensor 1 (1 device of 8)",
                  "parameters: 41,696 total, 32,480 active per token", "state per device: ",
                  "compiling the train step ...", "compiled the train step: "):
        assert any(line.startswith(start) for line in lines), start
    assert any(line.startswith("step 4: loss ") and "val_loss" in line and "held " in line
               for line in lines)


def test_heldout_numbers_are_moejax_eval_s_on_the_same_model_and_files(tmp_path, capsys):
    """A run's heldout evaluator at its last step and moejax-eval on the checkpoint of that
    step (its tokenizer, its train.seq_len as the window), same files, stride and batch
    size: the same loss, bits per byte, perplexity, counts, per file."""
    from moejax.cli import eval as eval_cli

    files = _heldout_files(tmp_path / "heldout")
    config = tiny_config(steps=2)
    config.evals.held = dict(kind="heldout", paths=files, domain_by="file", stride=5,
                             batch_size=3)
    train_and_evaluate(config, tmp_path / "run")
    row = metrics_rows(tmp_path / "run")[-1]
    assert row["step"] == 2
    out = tmp_path / "eval.json"
    assert eval_cli.main(["moejax-eval", "--workdir", str(tmp_path / "run"), "--data", files,
                          "--stride", "5", "--batch_size", "3", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["window"] == config.train.seq_len
    held = {metric: row[f"eval/held/{metric}"] for metric in (
        "loss", "bits_per_byte", "perplexity", "tokens", "bytes", "domain_loss",
        "domain_tokens", "domain_names")}
    total = record["all"]
    assert (held["tokens"], held["bytes"]) == (total["tokens"], total["bytes"])
    for metric, theirs in (("loss", "nats_per_token"), ("bits_per_byte", "bits_per_byte"),
                           ("perplexity", "perplexity")):
        assert held[metric] == pytest.approx(total[theirs], rel=1e-6, abs=1e-6), metric
    assert held["domain_names"] == [d["domain"] for d in record["domains"]] == [
        "code/a.txt", "prose/a.txt"]
    assert held["domain_tokens"] == [d["tokens"] for d in record["domains"]]
    np.testing.assert_allclose(held["domain_loss"],
                               [d["nats_per_token"] for d in record["domains"]], rtol=1e-6)


def test_lm_eval_runs_offline_on_the_live_model():
    """lm-eval's offline toy task through moejax.evaluation.lm_eval's model, on a freshly
    initialised tiny model (no training: the evaluator alone)."""
    pytest.importorskip("lm_eval")
    from moejax.parallel import batch_sharding
    from moejax.train.state import mesh_and_engine, sharded_model_and_optimizer

    config = tiny_config()
    config.evals.lm = dict(kind="lm_eval", tasks="moejax_toy_mc", include_path=str(TOY_TASKS),
                           limit=2)
    specs = specs_from_config(config)
    mesh, engine = mesh_and_engine(specs)
    model, _ = sharded_model_and_optimizer(specs.model, specs.train, specs.seed, mesh, engine)
    context = evaluators.Context(model, specs, batch_sharding(mesh), (), {})
    out = evaluators.evaluate(specs.evals, context)
    assert 0 <= out["eval/lm/moejax_toy_mc/acc"] <= 1 and "val_loss" not in out
