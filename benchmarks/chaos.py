"""Chaos run: kill training at random moments, resume, and compare with an uninterrupted run.

Each trial starts `moejax-train` on configs/tiny.py (asynchronous checkpoints every 2 steps),
kills it with SIGTERM or SIGKILL at a random moment (some trials wait for a checkpoint save to
be in flight and kill then), reruns the same command until it finishes, and compares the
final metrics row (loss, validation loss) with an uninterrupted run's, bit for bit, and checks
that metrics.jsonl logs every step exactly once. Prints a table and writes JSON.

With `--writers N`, it runs the writers trial instead: each of `--rounds` rounds starts N
`moejax-export` processes at once to one new --out (from a tiny workdir) and counts that
exactly one writes it, every other one refuses in one line (another writer holds the lock,
or the export is already there) and the export is complete (it loads; no lock, temporary
or old directory left beside it).

With `--full-disk N` (root only: it mounts small tmpfs disks), each of N trials trains in a
workdir on a tmpfs too small for the run, so that a checkpoint save (or a metrics row) hits
"no space left on device"; it counts that the run stops with exit status 5 and one line of its
own on stderr, every metrics row is whole, then copies the workdir to a large disk, reruns the
same command and compares the finished run with an uninterrupted one, bit for bit.

Usage:
  python benchmarks/chaos.py [--trials 8] [--steps 12] [--seed 0] [--json PATH]
  python benchmarks/chaos.py --writers 4 [--rounds 3] [--json PATH]
  sudo python benchmarks/chaos.py --full-disk 4 [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import shutil
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


def _tiny_workdir(workdir: pathlib.Path) -> None:
    """A workdir with one checkpoint step of a tiny model (what moejax-export reads)."""
    import jax
    import ml_collections
    import optax
    from flax import nnx

    from moejax.models.decoder import Decoder, decoder_spec_from_config
    from moejax.train.checkpoint import Checkpointer

    model_config = {"vocab_size": 64, "d_model": 32, "num_layers": 2, "num_heads": 2,
                    "num_kv_heads": 1, "d_ff": 48,
                    "moe": {"num_experts": 4, "top_k": 2, "d_hidden": 32}}
    config = ml_collections.ConfigDict({"seed": 0, "model": model_config, "train": {}})
    model = Decoder(decoder_spec_from_config(config.model), rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    with Checkpointer(workdir, async_save=False) as checkpointer:
        checkpointer.save(1, model=model, optimizer=optimizer, config=config,
                          rng_key=jax.random.key(1), data_state={})


_REFUSALS = ("is being written by another process (PID ", "is not empty; pass --overwrite")


def _writers_round(workdir: pathlib.Path, out: pathlib.Path, writers: int) -> dict:
    """N concurrent exports to `out` -> the round's counts and checks."""
    from moejax.models.weights import load_exported

    command = [sys.executable, "-m", "moejax.cli.export", "--workdir", str(workdir), "--out",
               str(out)]
    started = time.perf_counter()
    processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(writers)]
    outputs = [process.communicate(timeout=300) for process in processes]
    results = [(p.returncode, *output) for p, output in zip(processes, outputs, strict=True)]
    seconds = time.perf_counter() - started
    winners = [r for r in results if r[0] == 0]
    refusals = [r for r in results if r[0] == 1 and r[2].count("\n") == 1
                and r[2].startswith("moejax-export: ") and any(t in r[2] for t in _REFUSALS)]
    try:
        complete = load_exported(out)[0].num_layers == 2
    except (FileNotFoundError, ValueError, RuntimeError):
        complete = False
    left = sorted(p.name for p in out.parent.iterdir() if p.name.startswith((".out", "out.")))
    return dict(winners=len(winners), one_line_refusals=len(refusals),
                busy=sum(_REFUSALS[0] in r[2] for r in refusals),
                other=len(results) - len(winners) - len(refusals), complete=complete,
                left_beside=left, seconds=round(seconds, 2),
                ok=len(winners) == 1 and len(refusals) == writers - 1 and complete and not left,
                stderr=[r[2][-300:] for r in results if r not in winners and r not in refusals])


def writers_trial(writers: int, rounds: int, json_path: str) -> int:
    """The `--writers` trial (module docstring); prints a table, writes JSON."""
    with tempfile.TemporaryDirectory(prefix="moejax-chaos-writers-") as scratch:
        scratch = pathlib.Path(scratch)
        _tiny_workdir(scratch / "work")
        print("round  winners  refused in one line (busy)  other  complete  left beside  s")
        trials = []
        for number in range(rounds):
            (scratch / f"round_{number}").mkdir()
            row = _writers_round(scratch / "work", scratch / f"round_{number}" / "out", writers)
            trials.append(dict(round=number, **row))
            print(f"{number:5d}  {row['winners']:7d}  {row['one_line_refusals']:19d} "
                  f"({row['busy']})  {row['other']:5d}  {str(row['complete']):8s}  "
                  f"{str(row['left_beside']):11s}  {row['seconds']:.1f}", flush=True)
    passed = sum(t["ok"] for t in trials)
    print(f"\n{passed} of {rounds} rounds of {writers} concurrent moejax-export: exactly one "
          "wrote a complete export, every other refused in one line")
    _write_json(json_path, {"writers": writers, "rounds": rounds, "passed": passed,
                            "trials": trials})
    return 0 if passed == rounds else 1


def _write_json(path: str, record: dict) -> None:
    """Writes {"date": today, **record} to `path` (its folder made)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), **record}, indent=2) + "\n")


def _whole(line: str) -> bool:
    """Whether a metrics.jsonl line is a whole JSON object (not cut off)."""
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def _full_disk_trial(scratch: pathlib.Path, number: int, kib: int, steps: int, want) -> dict:
    """One --full-disk trial on a tmpfs of `kib` KiB (see the module docstring)."""
    disk, moved = scratch / f"disk_{number}", scratch / f"moved_{number}"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(disk)], check=True)
    try:
        first = _run(disk / "work", steps)
        rows_whole = all(map(_whole, (disk / "work" / METRICS_FILE).read_text().splitlines()))
        shutil.copytree(disk / "work", moved, symlinks=True)
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    own = [line for line in first.stderr.splitlines() if line.startswith("moejax-train:")]
    rerun = _run(moved, steps)
    rows = _rows(moved)
    identical = (rerun.returncode == 0 and rows[-1]["loss"] == want["loss"]
                 and rows[-1]["val_loss"] == want["val_loss"])
    once = [row["step"] for row in rows] == list(range(1, steps + 1))
    return {"disk_kib": kib, "returncode": first.returncode, "own_lines": len(own),
            "message": own[-1] if own else "", "rows_whole": rows_whole,
            "resumed_identical": identical, "steps_once": once,
            "ok": first.returncode == 5 and len(own) == 1 and rows_whole and identical and once}


def full_disk_trial(trials: int, steps: int, json_path: str) -> int:
    """The `--full-disk` trial (module docstring); prints a table, writes JSON."""
    if os.geteuid() != 0:
        print("--full-disk mounts tmpfs disks: run it as root")
        return 2
    with tempfile.TemporaryDirectory(prefix="moejax-chaos-disk-") as scratch:
        scratch = pathlib.Path(scratch)
        reference = _run(scratch / "reference", steps)
        want = _rows(scratch / "reference")[-1]
        if reference.returncode != 0:
            print(reference.stderr[-2000:])
            return 1
        print("trial  disk KiB  rc  own lines  rows whole  resumed identical  steps once")
        results = []
        for number in range(trials):
            row = _full_disk_trial(scratch, number, 600 + 300 * number, steps, want)
            results.append(dict(trial=number, **row))
            print(f"{number:5d}  {row['disk_kib']:8d}  {row['returncode']:2d}  "
                  f"{row['own_lines']:9d}  {str(row['rows_whole']):10s}  "
                  f"{str(row['resumed_identical']):17s}  {row['steps_once']}\n"
                  f"       {row['message']}", flush=True)
    passed = sum(r["ok"] for r in results)
    print(f"\n{passed} of {trials} runs on a full disk stopped with exit 5 in one line, whole "
          "metrics rows, and resumed elsewhere to the identical result")
    _write_json(json_path, {"steps": steps, "passed": passed,
                            "reference": {"loss": want["loss"], "val_loss": want["val_loss"]},
                            "trials": results})
    return 0 if passed == trials else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--writers", type=int, default=0,
                        help="run the writers trial with this many concurrent exports instead")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the writers trial")
    parser.add_argument("--full-disk", type=int, default=0,
                        help="run this many full-disk trials instead (root: mounts tmpfs)")
    parser.add_argument("--json", default=None, help="default: benchmarks/results/chaos.json "
                        "(chaos_writers.json for --writers)")
    args = parser.parse_args()
    if args.full_disk:
        return full_disk_trial(args.full_disk, args.steps, args.json or str(
            ROOT / "benchmarks/results/chaos_full_disk.json"))
    if args.writers:
        return writers_trial(args.writers, args.rounds, args.json or str(
            ROOT / "benchmarks/results/chaos_writers.json"))
    args.json = args.json or str(ROOT / "benchmarks/results/chaos.json")
    return _kill_trials(args)


def _kill_trials(args: argparse.Namespace) -> int:
    """The kill-and-resume trials (module docstring): --trials, --steps, --seed, --json."""
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
    _write_json(args.json, {"steps": args.steps, "seed": args.seed,
                            "reference": {"loss": want["loss"], "val_loss": want["val_loss"],
                                          "seconds": round(duration, 1)},
                            "survived": survived, "trials": trials})
    return 0 if survived == len(trials) else 1


if __name__ == "__main__":
    sys.exit(main())
