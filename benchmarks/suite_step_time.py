"""Train-step time of every variant of an experiment suite, capacity engine vs dropless.

Usage:
  python benchmarks/suite_step_time.py [--suite specialization] [--repeats N] [--json PATH]

Each variant's seed-0 config at the suite's default scale is compiled twice: as the suites
ran before 2026-12-02 (capacity engine, capacity factor 2) and as they run now (dropless,
tiled on CPU). All steps then run interleaved for N rounds (`moejax/train/step_time.py`);
the table gives each variant's median step time per engine and the median per-round ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics

import jax

from moejax.experiments.suites import SUITES, variant_config
from moejax.train.specs import specs_from_config
from moejax.train.step_time import compiled_step, interleaved_ms, median_ratio

ENGINES = {"capacity_cf2": dict(engine="capacity", capacity_factor=2.0),
           "dropless": dict(engine="dropless")}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), default="specialization")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--json", default=None, help="write results to this path")
    args = parser.parse_args()
    steps = {}
    for variant in SUITES[args.suite]:
        for engine, options in ENGINES.items():
            config = variant_config(variant, seed=0)
            config.model.moe.update(**options)
            steps[(variant.name, engine)] = compiled_step(specs_from_config(config))
            print(f"  compiled {variant.name} ({engine})", flush=True)
    times = interleaved_ms({f"{v}|{e}": run for (v, e), run in steps.items()}, args.repeats)
    rows = []
    print(f"{'variant':<26} {'capacity cf2 ms':>16} {'dropless ms':>12} {'ratio':>7}")
    for variant in SUITES[args.suite]:
        before, after = times[f"{variant.name}|capacity_cf2"], times[f"{variant.name}|dropless"]
        row = {"name": variant.name, "capacity_cf2_ms": statistics.median(before),
               "dropless_ms": statistics.median(after),
               "ratio_dropless_vs_capacity": median_ratio(after, before)}
        rows.append(row)
        print(f"{variant.name:<26} {row['capacity_cf2_ms']:>16.1f} {row['dropless_ms']:>12.1f} "
              f"{row['ratio_dropless_vs_capacity']:>7.3f}")
    total = statistics.median(r["ratio_dropless_vs_capacity"] for r in rows)
    print(f"median over variants: dropless / capacity cf2 = {total:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__,
                       "suite": args.suite, "rounds": args.repeats, "rows": rows}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
