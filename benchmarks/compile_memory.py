"""Compile time and per-device memory of the train step against depth, sequence length and
rematerialisation, from the compile plan (`moejax/train/plan.py`), scanned vs unrolled layers;
optionally the step time of both layouts.

Usage:
  python benchmarks/compile_memory.py [--config configs/default.py] [--depths 4,8,16,32]
      [--seq-lens 128,512] [--remat none,full,save_dots_except_experts] [--scan true,false]
      [--step-depths 4,16] [--step-rounds 8] [--json PATH]

Each row traces, lowers and compiles one train step of the config with `model.num_layers`,
`train.seq_len`, `model.remat` and `model.scan_layers` set and reports that time and XLA's
per-device memory (arguments, temporaries, total); the scanned and unrolled layouts of one
shape are compiled back to back. With `--step-depths`, the train steps of the scanned and the
unrolled layout at those depths (first sequence length, no remat) then run interleaved
(`moejax/train/step_time.py`) and the table gives the median per-round ratio scanned /
unrolled. Memory figures are XLA's buffer assignment for the backend it runs on (CPU here: a
guide, not a GPU's number).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics

import jax

from moejax.train.config_files import load_config
from moejax.train.plan import compile_plan
from moejax.train.specs import specs_from_config
from moejax.train.step_time import compiled_step, interleaved_ms, median_ratio

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.py"))
    parser.add_argument("--depths", default="4,8,16,32")
    parser.add_argument("--seq-lens", default="128,512")
    parser.add_argument("--remat", default="none,full,save_dots_except_experts")
    parser.add_argument("--scan", default="true,false", help="model.scan_layers values")
    parser.add_argument("--step-depths", default="", help="depths to time a step at")
    parser.add_argument("--step-rounds", type=int, default=8, help="interleaved rounds")
    parser.add_argument("--json", default=None, help="write results to this path")
    args = parser.parse_args()
    rows = []
    mib = 2.0**20
    print(f"device: {jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}")
    scans = [{"true": True, "false": False}[v] for v in args.scan.split(",")]
    print(f"{'layers':>6} {'seq':>5} {'remat':<26} {'scan':>5} {'compile s':>9} "
          f"{'args MiB':>9} {'temp MiB':>9} {'total MiB':>10}")
    for depth in map(int, args.depths.split(",")):
        for seq_len in map(int, args.seq_lens.split(",")):
            for remat in args.remat.split(","):
                for scan in scans:
                    config = load_config(args.config)
                    config.model.update(num_layers=depth, remat=remat, scan_layers=scan)
                    config.train.seq_len = seq_len
                    plan = compile_plan(specs_from_config(config))
                    row = {"layers": depth, "seq_len": seq_len, "remat": remat,
                           "scan_layers": scan,
                           **{k: plan[k] for k in ("compile_s", "argument_bytes",
                                                   "temp_bytes", "peak_bytes")}}
                    rows.append(row)
                    print(f"{depth:>6} {seq_len:>5} {remat:<26} {str(scan):>5} "
                          f"{row['compile_s']:>9.1f} {row['argument_bytes'] / mib:>9.1f} "
                          f"{row['temp_bytes'] / mib:>9.1f} {row['peak_bytes'] / mib:>10.1f}",
                          flush=True)
    step_rows = step_times(args) if args.step_depths else []
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__,
                       "config": args.config, "rows": rows, "step_time": step_rows,
                       "step_rounds": args.step_rounds}, f, indent=2)
            f.write("\n")


def step_times(args) -> list[dict]:
    """Scanned vs unrolled train-step time at each of `--step-depths`, interleaved."""
    steps = {}
    for depth in map(int, args.step_depths.split(",")):
        for scan in (True, False):
            config = load_config(args.config)
            config.model.update(num_layers=depth, scan_layers=scan)
            config.train.seq_len = int(args.seq_lens.split(",")[0])
            steps[f"{depth}|{scan}"] = compiled_step(specs_from_config(config))
    times = interleaved_ms(steps, args.step_rounds)
    rows = []
    print(f"{'layers':>6} {'scanned ms':>11} {'unrolled ms':>12} {'ratio':>7}")
    for depth in map(int, args.step_depths.split(",")):
        scanned, unrolled = times[f"{depth}|True"], times[f"{depth}|False"]
        row = {"layers": depth, "scanned_ms": statistics.median(scanned),
               "unrolled_ms": statistics.median(unrolled),
               "ratio_scanned_vs_unrolled": median_ratio(scanned, unrolled)}
        rows.append(row)
        print(f"{depth:>6} {row['scanned_ms']:>11.1f} {row['unrolled_ms']:>12.1f} "
              f"{row['ratio_scanned_vs_unrolled']:>7.3f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
