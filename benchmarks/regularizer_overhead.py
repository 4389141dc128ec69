"""Time of a jitted train step (forward + backward + AdamW) with lb only vs lb + sp + cp.

Usage:
  python benchmarks/regularizer_overhead.py [--json PATH] [--repeats N] [--layers L] ...

Every variant is compiled first, then the variants run interleaved (lb, lb+sp, lb+cp,
lb+sp+cp, lb, ...) for N rounds; each row reports the median of its per-round ratios to lb
alone, so that machine load common to a round cancels. The losses read all tokens
(no `loss.sp_max_tokens`) at paper A's weights, on unlogged steps (no routing metrics), as
in training. The experiment suites quote their step-time claim from this benchmark.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics

import jax

from moejax.train.config_files import load_config
from moejax.train.specs import specs_from_config
from moejax.train.step_time import compiled_step, interleaved_ms, median_ratio

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py"
VARIANTS = {  # paper A's weights
    "lb": dict(lb=1e-2),
    "lb+sp": dict(lb=1e-2, sp=2e-3),
    "lb+cp": dict(lb=1e-2, cp=1e-3),
    "lb+sp+cp": dict(lb=1e-2, sp=2e-3, cp=1e-3),
}


def _parse():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None, help="write results to this path")
    parser.add_argument("--repeats", type=int, default=20, help="interleaved rounds")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--d-hidden", type=int, default=512)
    parser.add_argument("--engine", default="dropless")
    return parser.parse_args()


def _config(args, weights: dict):
    """configs/default.py at the benchmark's shape, with these loss weights (others 0)."""
    config = load_config(DEFAULT_CONFIG)
    config.model.update(d_model=args.d_model, num_layers=args.layers, num_heads=4,
                        num_kv_heads=4, d_ff=4 * args.d_model)
    config.model.moe.update(num_experts=args.experts, top_k=args.top_k,
                            d_hidden=args.d_hidden, engine=args.engine)
    config.train.update(batch_size=args.batch, seq_len=args.seq)
    config.loss.update(lb=0.0, z=0.0, sp=0.0, cp=0.0, sp_max_tokens=None)
    config.loss.update(**weights)
    return config


def main():
    args = _parse()
    shape = {k: v for k, v in vars(args).items() if k not in ("json", "repeats")}
    device = f"{jax.devices()[0].device_kind} x{jax.device_count()}"
    print(f"device: {device}, jax {jax.__version__}")
    print(f"shape: {shape}, rounds: {args.repeats}; ratios are medians of per-round ratios")
    steps = {name: compiled_step(specs_from_config(_config(args, weights)))
             for name, weights in VARIANTS.items()}
    times = interleaved_ms(steps, args.repeats)
    rows = []
    print(f"{'variant':<10} {'median ms':>10} {'vs lb':>8}")
    for name, weights in VARIANTS.items():
        ms = statistics.median(times[name])
        row = {"name": name, "ms": ms, "ratio_vs_lb": median_ratio(times[name], times["lb"]),
               "loss": weights}
        rows.append(row)
        print(f"{name:<10} {ms:>10.2f} {row['ratio_vs_lb']:>8.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "jax": jax.__version__, "shape": shape,
                       "rounds": args.repeats, "rows": rows}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
