"""Experiment runner: trains a suite's matched variants over seeds and times its step-time claims.

Each run trains in DIR/runs/<config hash>/seed_<i> (finished runs are skipped, so an interrupted
suite continues where it stopped, and a configuration two suites share is trained once); a
fine-tuning variant first trains and exports its pretraining variant's seed-0 run (`pretrain`).
The suite's report is written by `suite_report.py` and the summary of every suite by
`summary.py`; suites and scales are in `suites.py`; the command is `moejax/cli/experiment.py`.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

from moejax.experiments import inference
from moejax.experiments.stats import STEP_MS_OVERHEAD
from moejax.experiments.suites import CLAIMS, OFFLOAD_SUITES, SUITES, RunOptions, variant_config
from moejax.models.upcycle import upcycle_export, upcycled_dir
from moejax.models.weights import export
from moejax.options import flat_config
from moejax.reporting.metrics import METRICS_FILE, STEP, VAL_LOSS, read_metrics
from moejax.train.specs import specs_from_config
from moejax.train.step_time import compiled_step, interleaved_ms
from moejax.train.trainer import train_and_evaluate

STEP_TIME_FILE = "step_time.json"
STEP_TIME_ROUNDS = {False: 10, True: 2}  # interleaved rounds per step-time claim (quick: 2)
EXPORT_DIR = "export"  # a pretraining run's exported weights, in its run directory

# Keys that change what a run writes or shows, not what it computes: left out of the run hash.
REPORTING_KEYS = frozenset({"seed", "train.report", "train.progress", "train.tensorboard",
                            "train.wandb", "train.mlflow"})


def run_dir(workdir: pathlib.Path, config) -> pathlib.Path:
    """DIR/runs/<hash of the resolved config>/seed_<seed>: identical runs of different suites
    (e.g. the load-balance-only arm) are trained once, and all seeds of a variant share one
    hash (seed 0, which also writes a run report, included). Options that are unset (None or
    empty) are left out, so adding an option whose default is off keeps every run's key."""
    settings = {k: v for k, v in flat_config(config).items()
                if k not in REPORTING_KEYS and v is not None and v != () and v != []}
    if settings.get("train.init_from"):  # a pretrained run of this DIR: keyed relative to it
        source = pathlib.Path(settings["train.init_from"])
        root = pathlib.Path(workdir).resolve()
        if source.is_relative_to(root):
            settings["train.init_from"] = source.relative_to(root).as_posix()
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    return workdir / "runs" / digest.hexdigest()[:12] / f"seed_{config.seed}"


def suite_config(variant, workdir, *, seed: int, options: RunOptions = RunOptions()):
    """`variant_config`, and for a fine-tuning variant `train.init_from` set to the export of
    its pretraining variant's seed-0 run in DIR (`pretrain`)."""
    config = variant_config(variant, seed=seed, options=options)
    if variant.init_from is not None:
        source = suite_config(variant.init_from, workdir, seed=0, options=options)
        start = run_dir(pathlib.Path(workdir).resolve(), source) / EXPORT_DIR
        if variant.upcycle is not None:  # that export upcycled (`upcycle`)
            start = upcycled_dir(start, variant.upcycle)
        config.train.init_from = str(start)
    return config


def pretrain(suite: str, variant, workdir: pathlib.Path, options: RunOptions) -> None:
    """Trains (unless finished) and exports the seed-0 run of `variant`, the pretraining that
    fine-tuning variants start from."""
    config = suite_config(variant, workdir, seed=0, options=options)
    directory = run_dir(workdir, config)
    _label_run(directory.parent, f"{suite}: {variant.name} (pretraining)")
    if not _finished(directory, config.train.steps):
        print(f"[{suite}] pretraining {variant.name} -> {directory}", flush=True)
        train_and_evaluate(config, directory)
    if not (directory / EXPORT_DIR / "config.json").exists():
        export(directory, directory / EXPORT_DIR, overwrite=True)


def upcycle(suite: str, variant, workdir: pathlib.Path, options: RunOptions) -> None:
    """Writes (unless written) the upcycle of its pretraining run's export that `variant`
    starts from (`moejax.models.upcycle.upcycle_export` with `variant.upcycle`)."""
    out = pathlib.Path(suite_config(variant, workdir, seed=0, options=options).train.init_from)
    if not (out / "config.json").exists():
        print(f"[{suite}] upcycling {variant.init_from.name} -> {out}", flush=True)
        upcycle_export(out.parent / EXPORT_DIR, out, **variant.upcycle, overwrite=True)


def _finished(directory: pathlib.Path, steps: int) -> bool:
    path = directory / METRICS_FILE
    if not path.exists():
        return False
    rows = read_metrics(path)
    return bool(rows) and rows[-1][STEP] >= steps and VAL_LOSS in rows[-1]


def _label_run(directory: pathlib.Path, label: str) -> None:
    """Notes in DIR/runs/<hash>/variants.txt which suite variants use this configuration."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "variants.txt"
    labels = path.read_text().splitlines() if path.exists() else []
    if label not in labels:
        path.write_text("\n".join([*labels, label]) + "\n")


def measure_step_times(suite: str, workdir, options: RunOptions = RunOptions()) -> dict:
    """The step-time claims' evidence: the two variants of each such claim (seed 0), compiled,
    then timed interleaved (`moejax/train/step_time.py`); {variant: [ms per round]}, kept in
    DIR/<suite>/step_time.json and measured again only when a variant's config changed."""
    path = pathlib.Path(workdir).resolve() / suite / STEP_TIME_FILE
    saved = json.loads(path.read_text()) if path.exists() else {}
    names = sorted({name for claim in CLAIMS[suite] if claim.metric == STEP_MS_OVERHEAD
                    for name in (claim.better, claim.than)})
    variants = {v.name: v for v in SUITES[suite]}
    configs = {name: suite_config(variants[name], path.parent.parent, seed=0, options=options)
               for name in names}
    keys = {name: run_dir(path.parent.parent, config).parent.name
            for name, config in configs.items()}
    if names and saved.get("configs") != keys:
        print(f"[{suite}] timing {', '.join(names)} interleaved", flush=True)
        steps = {name: compiled_step(specs_from_config(config))
                 for name, config in configs.items()}
        saved = {"configs": keys, "ms": interleaved_ms(steps, STEP_TIME_ROUNDS[options.quick])}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(saved, indent=1) + "\n")
    return saved.get("ms", {})


def run_suite(suite: str, workdir, *, seeds: int, options: RunOptions = RunOptions()) -> dict:
    """Trains every (variant, seed) not yet finished, then times the step-time claims'
    variants; returns variant name -> rows per seed."""
    workdir = pathlib.Path(workdir).resolve()
    runs = {}
    for variant in SUITES[suite]:
        if variant.init_from is not None:
            pretrain(suite, variant.init_from, workdir, options)
            if variant.upcycle is not None:
                upcycle(suite, variant, workdir, options)
        runs[variant.name] = []
        for seed in range(seeds):
            config = suite_config(variant, workdir, seed=seed, options=options)
            config.train.report = config.train.report and seed == 0
            directory = run_dir(workdir, config)
            _label_run(directory.parent, f"{suite}: {variant.name}")
            if not _finished(directory, config.train.steps):
                print(f"[{suite}] {variant.name} seed {seed} -> {directory}", flush=True)
                train_and_evaluate(config, directory)
            if suite in OFFLOAD_SUITES:
                inference.measure_run(directory, config)
                inference.measure_placement(directory, config)  # traces while weights exist
            runs[variant.name].append(read_metrics(directory / METRICS_FILE))
    measure_step_times(suite, workdir, options)
    return runs
