"""Cost of paper A's losses in a train step (forward + backward + AdamW): lb only vs lb + sp + cp.

Usage:
  python benchmarks/regularizer_overhead.py [--json PATH] [--repeats N] [--layers L] ...
  python benchmarks/regularizer_overhead.py --cost [--rows d128,d1024,...] [--time-rows ...]
      [--json benchmarks/results/regularizer_cost_cpu.json]

Default mode, wall-clock: every variant is compiled first, then the variants run interleaved
(lb, lb+sp, lb+cp, lb+sp+cp, lb, ...) for N rounds; each row reports the median of its
per-round ratios to lb alone, so that machine load common to a round cancels. The losses read
all tokens (no `loss.sp_max_tokens`) at paper A's weights, on unlogged steps (no routing
metrics), as in training. The experiment suites quote their step-time claim from this
benchmark.

--cost mode, XLA's count: for each row (a width and shape, `COST_ROWS`) every variant's train
step is compiled from abstract shapes (`moejax.train.cost.step_cost`: nothing allocated or
run, so d=2048 compiles as fast as d=128) and the table gives the ratios to lb alone of XLA's
FLOPs and bytes accessed (per device, the routing metrics' lax.cond branch, which runs on
logged steps only, subtracted), next to the analytic estimate K/(3D) (the specialization
loss's K x K cosines over each token's [K, F] activations, forward + backward, against its K
experts' SwiGLU matmuls: 6 K^2 F / (18 K D F)) and, for `--time-rows`, the wall-clock ratio
(lb vs lb+sp+cp, interleaved as above, median of per-round ratios). XLA counts a while loop's
body once, so the costed program has none: layers unrolled (`model.scan_layers=False`) and
the capacity engine at capacity factor 1.0 (exactly T K expert rows, the dropless engine's
matmul work without its tile padding; the tiled dropless engine on CPU is a loop). The
vocabulary stays the byte one (259): a real one adds logits work and lowers every ratio.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import time

import jax

from moejax.models.param_count import model_flops_per_token
from moejax.train.config_files import load_config
from moejax.train.cost import step_cost
from moejax.train.specs import specs_from_config
from moejax.train.step_time import compiled_step, interleaved_ms, median_ratio

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py"
VARIANTS = {  # paper A's weights
    "lb": dict(lb=1e-2),
    "lb+sp": dict(lb=1e-2, sp=2e-3),
    "lb+cp": dict(lb=1e-2, cp=1e-3),
    "lb+sp+cp": dict(lb=1e-2, sp=2e-3, cp=1e-3),
}
TIMED = ("lb", "lb+sp+cp")  # --cost mode times the claim's two variants only


def _row(d_model, layers, heads, kv_heads, experts, top_k, d_hidden, batch, seq, dtype):
    return dict(d_model=d_model, layers=layers, heads=heads, kv_heads=kv_heads,
                d_ff=4 * d_model, experts=experts, top_k=top_k, d_hidden=d_hidden, batch=batch,
                seq=seq, dtype=dtype)


# --cost rows. d128 is configs/default.py's model and batch. The paper widths scale it as a
# paper-scale model would be: 64-wide heads (N = D / 64), grouped-query attention with N / 2
# key/value heads as the default, 8 experts of width F = 2D (the default's ratio), top-2, in
# bfloat16, 2 layers (every ratio is per layer; cp needs 2 routers), 4 x 2048 tokens (the
# attention's share per token grows with the sequence). d1024-tiny is a batch the CPU can
# time; d2048-olmoe is a fine-grained model (OLMoE-1B-7B's layer: 16 heads of 128, 64 experts
# of width 1024, top-8), where K/(3D) is 4x larger. tiny is for tests and dry runs.
COST_ROWS = {
    "tiny": _row(64, 2, 2, 2, 4, 2, 64, 2, 32, "float32"),
    "d128": _row(128, 4, 4, 2, 8, 2, 256, 16, 128, "float32"),
    "d1024-tiny": _row(1024, 2, 16, 8, 8, 2, 2048, 2, 128, "float32"),
    "d1024": _row(1024, 2, 16, 8, 8, 2, 2048, 4, 2048, "bfloat16"),
    "d2048": _row(2048, 2, 32, 16, 8, 2, 4096, 4, 2048, "bfloat16"),
    "d2048-f32": _row(2048, 2, 32, 16, 8, 2, 4096, 4, 2048, "float32"),
    "d2048-olmoe": _row(2048, 2, 16, 16, 64, 8, 1024, 4, 2048, "bfloat16"),
}
CPU_ROWS = "d128,d1024-tiny,d1024,d2048,d2048-f32,d2048-olmoe"


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
    cost = parser.add_argument_group("--cost mode")
    cost.add_argument("--cost", action="store_true",
                      help="XLA's FLOPs and bytes per variant (COST_ROWS), nothing else above "
                           "but --json and --repeats applies")
    cost.add_argument("--rows", default=CPU_ROWS, help=f"COST_ROWS to cost: {', '.join(COST_ROWS)}")
    cost.add_argument("--time-rows", default="d128,d1024-tiny",
                      help="of --rows, those also timed (lb vs lb+sp+cp); '' for none")
    cost.add_argument("--dtype", default=None, help="override every row's compute dtype")
    cost.add_argument("--variants", default=",".join(VARIANTS),
                      help="variants to cost (lb and lb+sp+cp always are)")
    return parser.parse_args()


def _config(args, weights: dict):
    """configs/default.py at the benchmark's shape, with these loss weights (others 0)."""
    config = load_config(DEFAULT_CONFIG)
    config.model.update(d_model=args.d_model, num_layers=args.layers, num_heads=4,
                        num_kv_heads=4, d_ff=4 * args.d_model)
    config.model.moe.update(num_experts=args.experts, top_k=args.top_k,
                            d_hidden=args.d_hidden, engine=args.engine)
    config.train.update(batch_size=args.batch, seq_len=args.seq)
    return _with_losses(config, weights)


def _with_losses(config, weights: dict):
    config.loss.update(lb=0.0, z=0.0, sp=0.0, cp=0.0, sp_max_tokens=None)
    config.loss.update(**weights)
    return config


def cost_config(row: dict, weights: dict):
    """configs/default.py at a COST_ROWS shape, loop-free (layers unrolled, the capacity engine
    at capacity factor 1.0), with these loss weights (others 0). The trainer's
    `specs_from_config` turns model.moe.record_cosine on where sp needs it."""
    config = load_config(DEFAULT_CONFIG)
    config.model.update(d_model=row["d_model"], num_layers=row["layers"],
                        num_heads=row["heads"], num_kv_heads=row["kv_heads"],
                        d_ff=row["d_ff"], dtype=row["dtype"], scan_layers=False)
    config.model.moe.update(num_experts=row["experts"], top_k=row["top_k"],
                            d_hidden=row["d_hidden"], engine="capacity", capacity_factor=1.0)
    config.train.update(batch_size=row["batch"], seq_len=row["seq"])
    return _with_losses(config, weights)


def _device() -> str:
    return f"{jax.devices()[0].device_kind} x{jax.device_count()}"


def cost_row(name: str, row: dict, rounds: int, timed: bool, variants=tuple(VARIANTS)) -> dict:
    """One COST_ROWS row: each variant's `step_cost` (lb and lb+sp+cp always), their ratios to
    lb alone, K/(3D) and (timed) the wall-clock ratio of lb+sp+cp to lb."""
    costs = {}
    for variant in dict.fromkeys(("lb", *variants, "lb+sp+cp")):
        costs[variant] = step_cost(specs_from_config(cost_config(row, VARIANTS[variant])))
        if costs[variant]["while_loops"]:
            print(f"warning: {name}/{variant}: the compiled step has while loops, whose bodies "
                  "XLA counts once: its FLOPs and bytes are incomplete")
    base = costs["lb"]
    ratios = {variant: {"flops": c["flops_unlogged"] / base["flops_unlogged"],
                        "bytes": c["bytes_unlogged"] / base["bytes_unlogged"]}
              for variant, c in costs.items()}
    specs = specs_from_config(cost_config(row, VARIANTS["lb"]))
    tokens = row["batch"] * row["seq"]
    out = {"name": name, "shape": row, "variants": costs, "ratios": ratios,
           "complete": not any(c["while_loops"] for c in costs.values()),
           "k_over_3d": row["top_k"] / (3 * row["d_model"]),
           "model_flops_per_step": model_flops_per_token(specs.model, row["seq"]) * tokens}
    if timed:
        steps = {v: compiled_step(specs_from_config(cost_config(row, VARIANTS[v])))
                 for v in TIMED}
        times = interleaved_ms(steps, rounds)
        out["ms"] = {v: statistics.median(times[v]) for v in TIMED}
        out["time_ratio"] = median_ratio(times["lb+sp+cp"], times["lb"])
        out["rounds"] = rounds
    return out


def _pct(ratio: float, digits: int = 2) -> str:
    return f"{(ratio - 1) * 100:+.{digits}f}%"


def format_cost_table(rows: list[dict]) -> str:
    """The --cost rows as a markdown table (lb+sp+cp vs lb)."""
    lines = ["| row | D | E / K / F | tokens | layers | dtype | lb GFLOP | FLOPs: +sp | +cp "
             "| +sp+cp | bytes: +sp+cp | K/(3D) | wall-clock +sp+cp |",
             "| --- | ---: | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: "
             "| ---: |"]
    for r in rows:
        s, ratio = r["shape"], r["ratios"]
        flops = {v: _pct(ratio[v]["flops"], 3) if v in ratio else "-" for v in VARIANTS}
        timed = (f"{_pct(r['time_ratio'])} ({r['ms']['lb']:.0f} ms, {r['rounds']} rounds)"
                 if "time_ratio" in r else "-")
        mark = "" if r["complete"] else " (loops: incomplete)"
        lines.append(
            f"| {r['name']}{mark} | {s['d_model']} "
            f"| {s['experts']} / {s['top_k']} / {s['d_hidden']} "
            f"| {s['batch']} x {s['seq']} | {s['layers']} | {s['dtype']} "
            f"| {r['variants']['lb']['flops_unlogged'] / 1e9:,.1f} "
            f"| {flops['lb+sp']} | {flops['lb+cp']} | {flops['lb+sp+cp']} "
            f"| {_pct(ratio['lb+sp+cp']['bytes'])} | {r['k_over_3d'] * 100:.3f}% | {timed} |")
    return "\n".join(lines)


def main_cost(args):
    names = [n for n in args.rows.split(",") if n]
    timed = {n for n in args.time_rows.split(",") if n}
    unknown = sorted((set(names) | timed) - set(COST_ROWS))
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {', '.join(COST_ROWS)}")
    print(f"device: {_device()}, jax {jax.__version__}; XLA's cost analysis of the compiled "
          "train step, per device; ratios to lb alone")
    rows = []
    for name in names:
        row = dict(COST_ROWS[name], **({"dtype": args.dtype} if args.dtype else {}))
        started = time.perf_counter()
        rows.append(cost_row(name, row, args.repeats, name in timed,
                             tuple(v for v in args.variants.split(",") if v)))
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    print(format_cost_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": _device(), "jax": jax.__version__,
                       "machine": platform.processor() or platform.machine(),
                       "date": time.strftime("%Y-%m-%d"), "rows": rows}, f, indent=2)
            f.write("\n")
    return rows


def main():
    args = _parse()
    if args.cost:
        main_cost(args)
        return
    shape = {k: v for k, v in vars(args).items()
             if k not in ("json", "repeats", "cost", "rows", "time_rows", "dtype", "variants")}
    device = _device()
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
