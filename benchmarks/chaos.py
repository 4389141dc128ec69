"""Chaos run: kill training at random moments, resume, and compare with an uninterrupted run.

Each trial starts `moejax-train` on configs/tiny.py (asynchronous checkpoints every 2 steps),
kills it with SIGTERM or SIGKILL at a random moment (some trials wait for a checkpoint save to
be in flight and kill then), reruns the same command until it finishes, and compares the
final metrics row (loss, validation loss) with an uninterrupted run's, bit for bit, and checks
that metrics.jsonl logs every step exactly once. Prints a table and writes JSON.

Usage:
  python benchmarks/chaos.py [--trials 8] [--steps 12] [--seed 0] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

from moejax.reporting.metrics import METRICS_FILE, read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _command(workdir: pathlib.Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "moejax.cli.train", "--config", str(ROOT / "configs/tiny.py"),
            "--workdir", str(workdir), f"--config.train.steps={steps}",
            "--config.train.checkpoint_every=2", "--config.train.log_every=1",
            "--config.train.eval_every=1000", "--config.train.progress=False",
            "--config.train.report=False", "--config.train.async_checkpoint=True"]


def _run(workdir, steps) -> subprocess.CompletedProcess:
    return subprocess.run(_command(workdir, steps), cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


def _rows(workdir: pathlib.Path) -> list[dict]:
    """The logged rows ([] before the first; a line cut off by a kill is skipped)."""
    try:
        return read_metrics(workdir / METRICS_FILE)
    except (FileNotFoundError, ValueError):
        return []


def _saving(workdir: pathlib.Path) -> bool:
    return any(p.name.count("orbax-checkpoint-tmp")
               for p in (workdir / "checkpoints").glob("*") if p.is_dir())


def _killed_run(workdir, steps, signum, delay, during_save) -> dict:
    """Starts a run and kills it after `delay` s (or at the first save in flight after it)."""
    process = subprocess.Popen(_command(workdir, steps), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    started = time.perf_counter()
    saving = False
    while process.poll() is None:
        elapsed = time.perf_counter() - started
        if elapsed >= delay:
            saving = (workdir / "checkpoints").is_dir() and _saving(workdir)
            if not during_save or saving or elapsed > 4 * delay:
                process.send_signal(signum)
                break
        time.sleep(0.005)
    output, _ = process.communicate(timeout=600)
    return dict(killed_at_s=round(time.perf_counter() - started, 2),
                during_save=saving, returncode=process.returncode, output_tail=output[-300:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/chaos.json"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="moejax-chaos-") as scratch:
        scratch = pathlib.Path(scratch)
        started = time.perf_counter()
        reference = _run(scratch / "reference", args.steps)
        duration = time.perf_counter() - started
        if reference.returncode != 0:
            print(reference.stderr[-2000:])
            return 1
        want = _rows(scratch / "reference")[-1]
        trials = []
        print(f"uninterrupted run: {duration:.1f} s, final loss {want['loss']!r}, "
              f"val_loss {want['val_loss']!r}")
        print("trial  signal   killed at  in save  rc    resumes  identical  steps once")
        for trial in range(args.trials):
            workdir = scratch / f"trial_{trial}"
            signum = rng.choice([signal.SIGTERM, signal.SIGKILL])
            during_save = trial % 2 == 1
            kill = _killed_run(workdir, args.steps, signum, rng.uniform(0.2, 0.9) * duration,
                               during_save)
            resumes = 0
            while resumes == 0 or [row["step"] for row in _rows(workdir)][-1:] != [args.steps]:
                result = _run(workdir, args.steps)
                resumes += 1
                if result.returncode != 0 or resumes > 3:
                    print(result.stderr[-2000:])
                    break
            rows = _rows(workdir)
            got = rows[-1]
            identical = (got["step"] == args.steps and got["loss"] == want["loss"]
                         and got["val_loss"] == want["val_loss"])
            once = [row["step"] for row in rows] == list(range(1, args.steps + 1))
            trials.append(dict(trial=trial, signal=signal.Signals(signum).name, **kill,
                               resumes=resumes, identical=identical, steps_once=once,
                               final_loss=got["loss"]))
            print(f"{trial:5d}  {signal.Signals(signum).name:7s}  {kill['killed_at_s']:8.2f}s"
                  f"  {str(kill['during_save']):7s}  {kill['returncode']:4d}  {resumes:7d}"
                  f"  {str(identical):9s}  {once}", flush=True)
    survived = sum(t["identical"] and t["steps_once"] for t in trials)
    print(f"\n{survived} of {len(trials)} killed runs resumed to the identical final loss with "
          "every step logged once")
    pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.json).write_text(json.dumps(
        {"date": time.strftime("%Y-%m-%d"), "steps": args.steps, "seed": args.seed,
         "reference": {"loss": want["loss"], "val_loss": want["val_loss"],
                       "seconds": round(duration, 1)},
         "survived": survived, "trials": trials}, indent=2) + "\n")
    return 0 if survived == len(trials) else 1


if __name__ == "__main__":
    sys.exit(main())
