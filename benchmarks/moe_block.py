"""Forward + backward time of one MoE block per engine against a dense SwiGLU FFN.

Usage:
  python benchmarks/moe_block.py [--size cpu|gpu|tiny] [--tokens T] [--d-model D] [--experts E]
      [--top-k K] [--d-hidden F] [--dtype float32|bfloat16] [--repeats N] [--json PATH]
      [--skip-dense-engine | --no-skip-dense-engine]

Each MoE row times jit(grad) of sum(y**2) with respect to x, the router and all expert
weights, routing included (`route` + `routed_experts_forward`). The baseline is a dense
SwiGLU FFN with the same active parameters (hidden width K*F). Compile time is excluded;
the figure is the median of N runs on random inputs. The dense engine does E times the
work and is skipped by default when E*T is large.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp

from moejax.layers.ffn import init_swiglu_weights, swiglu
from moejax.moe.experts import ExpertWeights
from moejax.moe.router import RouterSpec, route
from moejax.moe.spec import MoESpec
from moejax.moe.topk import routed_experts_forward

PRESETS = {
    "tiny": dict(tokens=256, d_model=64, experts=8, top_k=2, d_hidden=32, dtype="float32"),
    "cpu": dict(tokens=4096, d_model=512, experts=64, top_k=4, d_hidden=256, dtype="float32"),
    "gpu": dict(tokens=65536, d_model=2048, experts=64, top_k=8, d_hidden=1408,
                dtype="bfloat16"),
}
ENGINE_ORDER = ("dense", "capacity", "dropless")
CAPACITY_FACTOR = 1.25
DENSE_ENGINE_MAX_ET = 65536  # skip the dense engine by default above this E*T
SLOW_RUN_S = 2.0  # a row whose warm-up run takes longer is timed over at most SLOW_REPEATS runs
SLOW_REPEATS = 3


def _parse():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(PRESETS), default="cpu")
    for name in ("tokens", "d-model", "experts", "top-k", "d-hidden"):
        parser.add_argument(f"--{name}", type=int, default=None, help="overrides --size")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="default: the preset's (bfloat16 for gpu, else float32)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=None, help="write results to this path")
    parser.add_argument("--skip-dense-engine", action=argparse.BooleanOptionalAction,
                        default=None, help=f"default: skip when E*T > {DENSE_ENGINE_MAX_ET}")
    args = parser.parse_args()
    shape = dict(PRESETS[args.size])
    for key in shape:
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    if args.skip_dense_engine is None:
        args.skip_dense_engine = shape["experts"] * shape["tokens"] > DENSE_ENGINE_MAX_ET
    return args, shape


def _make_params(shape: dict, dtype, key: jax.Array):
    """Random x [T, D], router [D, E], expert weights and FFN weights (hidden K*F)."""
    k_x, k_router, k_experts, k_ffn = jax.random.split(key, 4)
    tokens, d_model, experts = shape["tokens"], shape["d_model"], shape["experts"]
    x = jax.random.normal(k_x, (tokens, d_model), jnp.float32).astype(dtype)
    w_router = jax.random.normal(k_router, (d_model, experts), jnp.float32) * d_model**-0.5
    expert_w = init_swiglu_weights(k_experts, experts, d_model, shape["d_hidden"])
    ffn_w = init_swiglu_weights(k_ffn, 1, d_model, shape["top_k"] * shape["d_hidden"])
    expert_w = ExpertWeights(*(w.astype(dtype) for w in expert_w))
    ffn_w = tuple(w[0].astype(dtype) for w in ffn_w)
    return x, w_router, expert_w, ffn_w


def _moe_loss(x, w_router, weights, *, spec: MoESpec):
    """sum(y**2) of one MoE block; aux: dropped slots."""
    routing = route(x, w_router, spec.router, spec.top_k)
    y, record = routed_experts_forward(x, routing, weights, spec)
    return jnp.sum(jnp.square(y.astype(jnp.float32))), record.dropped[0]


def _ffn_loss(x, w_gate, w_up, w_down):
    """sum(y**2) of a dense SwiGLU FFN."""
    y, _ = swiglu(x, w_gate, w_up, w_down)
    return jnp.sum(jnp.square(y.astype(jnp.float32))), jnp.zeros((), jnp.int32)


def _time(fn, args, repeats: int):
    """Median ms of fn(*args) after compile and one warm-up; also aux and the run count.

    A row slower than SLOW_RUN_S per run (the dropless engine's ragged_dot on CPU) is
    timed over at most SLOW_REPEATS runs.
    """
    out = jax.block_until_ready(fn(*args))  # compile
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))  # warm-up
    if time.perf_counter() - start > SLOW_RUN_S:
        repeats = min(repeats, SLOW_REPEATS)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    (_, aux), _ = out
    return statistics.median(times), int(aux), repeats


def _run_all(args, shape: dict) -> list[dict]:
    """Times the dense FFN and each engine; rows in print order."""
    dtype = jnp.dtype(shape["dtype"])
    x, w_router, expert_w, ffn_w = _make_params(shape, dtype, jax.random.key(0))
    ffn_step = jax.jit(jax.value_and_grad(_ffn_loss, argnums=(0, 1, 2, 3), has_aux=True))
    ffn_ms, _, runs = _time(ffn_step, (x, *ffn_w), args.repeats)
    rows = [{"name": "dense_ffn", "ms": ffn_ms, "ratio_vs_dense": 1.0, "runs": runs}]
    slots = shape["tokens"] * shape["top_k"]
    for engine in ENGINE_ORDER:
        if engine == "dense" and args.skip_dense_engine:
            continue
        spec = MoESpec(num_experts=shape["experts"], top_k=shape["top_k"],
                       d_hidden=shape["d_hidden"], engine=engine,
                       capacity_factor=CAPACITY_FACTOR, router=RouterSpec())
        loss = functools.partial(_moe_loss, spec=spec)
        moe_step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
        ms, dropped, runs = _time(moe_step, (x, w_router, expert_w), args.repeats)
        name = f"moe_{engine}" + (f"_cf{CAPACITY_FACTOR}" if engine == "capacity" else "")
        row = {"name": name, "ms": ms, "ratio_vs_dense": ms / ffn_ms, "runs": runs}
        if engine == "capacity":
            row["dropped_fraction"] = dropped / slots
        rows.append(row)
        print(f"  done {name}: {ms:.1f} ms", flush=True)
    return rows


def _print_table(rows: list[dict]) -> None:
    print(f"{'name':<20} {'median ms':>10} {'vs dense FFN':>13} {'dropped':>8} {'runs':>5}")
    for row in rows:
        dropped = row.get("dropped_fraction")
        dropped_text = "-" if dropped is None else f"{dropped:.2%}"
        print(f"{row['name']:<20} {row['ms']:>10.2f} {row['ratio_vs_dense']:>12.2f}x "
              f"{dropped_text:>8} {row['runs']:>5}")


def main():
    args, shape = _parse()
    device = f"{jax.devices()[0].device_kind} x{jax.device_count()}"
    if jax.default_backend() == "cpu":
        device += f" ({os.cpu_count()} cores)"
    shape = dict(shape, capacity_factor=CAPACITY_FACTOR)
    print(f"device: {device}, jax {jax.__version__}")
    print(f"shape: {shape}, repeats: {args.repeats}, fwd+bwd, routing included")
    if args.skip_dense_engine:
        print("dense engine skipped (E times the work; --no-skip-dense-engine to include)")
    rows = _run_all(args, shape)
    _print_table(rows)
    if args.json:
        path = pathlib.Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        result = {"device": device, "jax": jax.__version__, "shape": shape, "rows": rows}
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
