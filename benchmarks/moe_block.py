"""Forward + backward time of one MoE block per engine against a dense SwiGLU FFN.

Usage:
  python benchmarks/moe_block.py [--size cpu|gpu|tiny] [--tokens T] [--d-model D] [--experts E]
      [--top-k K] [--d-hidden F] [--dtype float32|bfloat16] [--repeats N] [--json PATH]
      [--skip-dense-engine | --no-skip-dense-engine] [--grouped-matmul auto,ragged_dot,...]

Each MoE row times jit(grad) of sum(y**2) with respect to x, the router and all expert
weights, routing included (`route` + `routed_experts_forward`). The baseline is a dense
SwiGLU FFN with the same active parameters (hidden width K*F). "expert_matmuls_cf*" is the
capacity engine's floor: the expert SwiGLU alone on filled [E, C, D] buffers (no routing, no
data movement). Compile time is excluded. The variants run interleaved (dense, A, B, ...,
dense, A, B, ...) and each row reports the median of its per-round ratios to the dense FFN
(and the capacity row to its floor), so that machine load common to a round cancels. The
dense engine does E times the work and is skipped by default when E*T is large.
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

from moejax.kernels import resolve_grouped_matmul
from moejax.layers.ffn import init_swiglu_weights, swiglu
from moejax.moe.dispatch import capacity_for
from moejax.moe.experts import ExpertWeights, experts_on_buffers
from moejax.moe.router import RouterSpec, route
from moejax.moe.spec import MoESpec
from moejax.moe.topk import routed_experts_forward

PRESETS = {
    "tiny": dict(tokens=256, d_model=64, experts=8, top_k=2, d_hidden=32, dtype="float32"),
    "cpu": dict(tokens=4096, d_model=512, experts=64, top_k=4, d_hidden=256, dtype="float32"),
    "gpu": dict(tokens=65536, d_model=2048, experts=64, top_k=8, d_hidden=1408,
                dtype="bfloat16"),
}
CAPACITY_FACTORS = (1.25, 1.0)  # the capacity engine runs at the first; floors at both
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
    parser.add_argument("--repeats", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--grouped-matmul", default="auto",
                        help="comma-separated dropless implementations (auto, tiled, "
                             "ragged_dot, tokamax)")
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


def _buffers_loss(buffers, weights):
    """sum(y**2) of the experts on filled [E, C, D] buffers: the capacity engine's floor."""
    y, _ = experts_on_buffers(buffers, weights)
    return jnp.sum(jnp.square(y.astype(jnp.float32))), jnp.zeros((), jnp.int32)


def _ffn_loss(x, w_gate, w_up, w_down):
    """sum(y**2) of a dense SwiGLU FFN."""
    y, _ = swiglu(x, w_gate, w_up, w_down)
    return jnp.sum(jnp.square(y.astype(jnp.float32))), jnp.zeros((), jnp.int32)


def _interleaved(steps: dict, repeats: int) -> dict:
    """{name: [ms per round]}: every step compiled and warmed up, then run in turn each round.

    A step slower than SLOW_RUN_S per run (ragged_dot on CPU) runs in at most SLOW_REPEATS
    rounds.
    """
    slow = set()
    for name, (fn, args) in steps.items():
        jax.block_until_ready(fn(*args))  # compile
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))  # warm-up
        if time.perf_counter() - start > SLOW_RUN_S:
            slow.add(name)
        print(f"  compiled {name}", flush=True)
    times = {name: [] for name in steps}
    for round_index in range(repeats):
        for name, (fn, args) in steps.items():
            if name in slow and round_index >= SLOW_REPEATS:
                continue
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def _paired_ratio(times: list[float], base: list[float]) -> float:
    """Median over rounds of times[r] / base[r] (the rounds both ran)."""
    return statistics.median(a / b for a, b in zip(times, base))


def _steps(shape: dict, grouped_matmuls: list[str], skip_dense_engine: bool):
    """{row name: (jitted fwd+bwd, args)} in print order, and each MoE row's spec."""
    dtype = jnp.dtype(shape["dtype"])
    x, w_router, expert_w, ffn_w = _make_params(shape, dtype, jax.random.key(0))
    grad = functools.partial(jax.value_and_grad, has_aux=True)
    steps = {"dense_ffn": (jax.jit(grad(_ffn_loss, argnums=(0, 1, 2, 3))), (x, *ffn_w))}
    specs = {}
    for factor in CAPACITY_FACTORS:
        capacity = capacity_for(shape["tokens"], shape["top_k"], shape["experts"], factor)
        buffers = jnp.resize(x, (shape["experts"], capacity, shape["d_model"]))
        steps[f"expert_matmuls_cf{factor}"] = (
            jax.jit(grad(_buffers_loss, argnums=(0, 1))), (buffers, expert_w))
    variants = [("capacity", "auto")] + [("dropless", impl) for impl in grouped_matmuls]
    if not skip_dense_engine:
        variants.insert(0, ("dense", "auto"))
    for engine, impl in variants:
        spec = MoESpec(num_experts=shape["experts"], top_k=shape["top_k"],
                       d_hidden=shape["d_hidden"], engine=engine, grouped_matmul=impl,
                       capacity_factor=CAPACITY_FACTORS[0], router=RouterSpec())
        name = f"moe_{engine}"
        if engine == "capacity":
            name += f"_cf{CAPACITY_FACTORS[0]}"
        if engine == "dropless":
            name += f"_{resolve_grouped_matmul(impl)}"
        loss = functools.partial(_moe_loss, spec=spec)
        steps[name] = (jax.jit(grad(loss, argnums=(0, 1, 2))), (x, w_router, expert_w))
        specs[name] = spec
    return steps, specs


def _run_all(args, shape: dict) -> list[dict]:
    """Times the dense FFN, the floors and each engine, interleaved; rows in print order."""
    steps, specs = _steps(shape, args.grouped_matmul.split(","), args.skip_dense_engine)
    times = _interleaved(steps, args.repeats)
    base = times["dense_ffn"]
    floor = times[f"expert_matmuls_cf{CAPACITY_FACTORS[0]}"]
    slots = shape["tokens"] * shape["top_k"]
    rows = []
    for name, (fn, fn_args) in steps.items():
        row = {"name": name, "ms": statistics.median(times[name]),
               "ratio_vs_dense": _paired_ratio(times[name], base), "runs": len(times[name])}
        if name.startswith("moe_capacity"):
            row["ratio_vs_floor"] = _paired_ratio(times[name], floor)
            (_, dropped), _ = fn(*fn_args)
            row["dropped_fraction"] = int(dropped) / slots
        rows.append(row)
    return rows


def _print_table(rows: list[dict]) -> None:
    print(f"{'name':<24} {'median ms':>10} {'vs dense FFN':>13} {'vs floor':>9} "
          f"{'dropped':>8} {'runs':>5}")
    for row in rows:
        dropped = row.get("dropped_fraction")
        dropped_text = "-" if dropped is None else f"{dropped:.2%}"
        floor = row.get("ratio_vs_floor")
        floor_text = "-" if floor is None else f"{floor:.2f}x"
        print(f"{row['name']:<24} {row['ms']:>10.2f} {row['ratio_vs_dense']:>12.2f}x "
              f"{floor_text:>9} {dropped_text:>8} {row['runs']:>5}")


def main():
    args, shape = _parse()
    device = f"{jax.devices()[0].device_kind} x{jax.device_count()}"
    if jax.default_backend() == "cpu":
        device += f" ({os.cpu_count()} cores)"
    shape = dict(shape, capacity_factor=CAPACITY_FACTORS[0])
    print(f"device: {device}, jax {jax.__version__}")
    print(f"shape: {shape}, rounds: {args.repeats}, fwd+bwd, routing included; ratios are "
          "medians of per-round ratios")
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
