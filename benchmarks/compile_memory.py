"""Compile time and per-device memory of the train step against depth, sequence length and
rematerialisation, from the compile plan (`moejax/train/plan.py`); nothing is run.

Usage:
  python benchmarks/compile_memory.py [--config configs/default.py] [--depths 4,8,16,32]
      [--seq-lens 128,512] [--remat none,full,save_dots_except_experts] [--json PATH]

Each row compiles one train step of the config with `model.num_layers`, `train.seq_len` and
`model.remat` set (layers unrolled: `model.scan_layers` does not exist yet) and reports the
compile time and XLA's per-device memory (arguments, temporaries, total). Memory figures are
XLA's buffer assignment for the backend it runs on (CPU here: a guide, not a GPU's number).
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax

from moejax.train.config_files import load_config
from moejax.train.plan import compile_plan

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.py"))
    parser.add_argument("--depths", default="4,8,16,32")
    parser.add_argument("--seq-lens", default="128,512")
    parser.add_argument("--remat", default="none,full,save_dots_except_experts")
    parser.add_argument("--json", default=None, help="write results to this path")
    args = parser.parse_args()
    rows = []
    mib = 2.0**20
    print(f"device: {jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}")
    print(f"{'layers':>6} {'seq':>5} {'remat':<26} {'compile s':>9} {'args MiB':>9} "
          f"{'temp MiB':>9} {'total MiB':>10}")
    for depth in map(int, args.depths.split(",")):
        for seq_len in map(int, args.seq_lens.split(",")):
            for remat in args.remat.split(","):
                config = load_config(args.config)
                config.model.update(num_layers=depth, remat=remat)
                config.train.seq_len = seq_len
                plan = compile_plan(config)
                row = {"layers": depth, "seq_len": seq_len, "remat": remat,
                       **{k: plan[k] for k in ("compile_s", "argument_bytes", "temp_bytes",
                                               "peak_bytes")}}
                rows.append(row)
                print(f"{depth:>6} {seq_len:>5} {remat:<26} {row['compile_s']:>9.1f} "
                      f"{row['argument_bytes'] / mib:>9.1f} {row['temp_bytes'] / mib:>9.1f} "
                      f"{row['peak_bytes'] / mib:>10.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__,
                       "config": args.config, "rows": rows}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
