"""Expert-parallel modes: step time and bytes moved by collectives, per device.

Usage:
  python benchmarks/expert_parallel.py [--size cpu|gpu|tiny] [--mesh DATA,FSDP,EXPERT,TENSOR]
      [--modes none,all_to_all,ring,ragged] [--repeats N] [--json PATH]

Each row times jit(grad) of sum(y**2) for one top-k MoE block (router, plan, experts,
combine; forward + backward) on the mesh, with the expert weights sharded over `expert` and
the tokens over (data, fsdp, expert). "none" lets XLA partition the capacity engine by itself
(the baseline); the other rows use `moejax.parallel.ExpertParallel`. Bytes moved are read from
the compiled HLO: the sum over collective ops (all-to-all, all-gather, reduce-scatter,
all-reduce, collective-permute, ragged-all-to-all) of their per-device result sizes, forward
and backward together. On CPU the 8 devices are fake (one process, threads over 2 cores), so
times show overheads, not network costs; "ragged" is skipped there (XLA:CPU cannot compile it).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import statistics
import time

import jax

jax.config.update("jax_num_cpu_devices", 8)  # 8 fake CPU devices; no effect on a GPU backend

import jax.numpy as jnp  # noqa: E402 (after the device count is set)
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from moejax.moe.spec import MoESpec  # noqa: E402
from moejax.moe.topk import TopKMoE  # noqa: E402
from moejax.parallel import MeshSpec, make_expert_parallel, make_mesh  # noqa: E402
from moejax.parallel.sharding import state_shardings  # noqa: E402

PRESETS = {
    "tiny": dict(tokens=512, d_model=64, experts=8, top_k=2, d_hidden=64),
    "cpu": dict(tokens=8192, d_model=256, experts=16, top_k=2, d_hidden=512),
    "gpu": dict(tokens=65536, d_model=2048, experts=64, top_k=8, d_hidden=1408),
}
COLLECTIVES = ("all-to-all", "ragged-all-to-all", "all-gather", "reduce-scatter", "all-reduce",
               "collective-permute")
_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1,
          "f64": 8, "s64": 8}
_OP = re.compile(r"=\s*(\(?[^=]*?\)?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_SHAPE = re.compile(r"(\w+)\[([\d,]*)\]")


def collective_bytes(hlo_text: str) -> dict:
    """Per-device result bytes of every collective in an HLO module, by op kind."""
    moved = dict.fromkeys(COLLECTIVES, 0)
    for line in hlo_text.splitlines():
        match = _OP.search(line)
        if not match:
            continue
        for dtype, dims in _SHAPE.findall(match.group(1)):
            if dtype in _BYTES:
                size = int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
                moved[match.group(2)] += size * _BYTES[dtype]
    return moved


def _parse():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--mesh", default="1,1,8,1", help="data,fsdp,expert,tensor")
    parser.add_argument("--modes", default="none,all_to_all,ring,ragged")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="write results to this path")
    return parser.parse_args()


def _step(mode: str, mesh, shape: dict, dtype):
    spec = MoESpec(num_experts=shape["experts"], top_k=shape["top_k"],
                   d_hidden=shape["d_hidden"], capacity_factor=1.25,
                   engine="capacity" if mode in ("none", "all_to_all") else "dropless")
    engine = make_expert_parallel(mode, mesh)
    block = TopKMoE(shape["d_model"], spec, rngs=nnx.Rngs(0), engine=engine)
    graphdef, params = nnx.split(block)
    params = jax.device_put(params, state_shardings(params, mesh))
    x = jax.random.normal(jax.random.key(1), (shape["tokens"], shape["d_model"]), dtype)
    x = jax.device_put(x, jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(("data", "fsdp", "expert"))))

    def loss(params, x):
        y, record = nnx.merge(graphdef, params)(x)
        return jnp.sum(jnp.square(y.astype(jnp.float32))), record.dropped.sum()

    step = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
    return step, (params, x)


def _time(step, args, repeats: int) -> float:
    jax.block_until_ready(step(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    args = _parse()
    shape = PRESETS[args.size]
    data, fsdp, expert, tensor = (int(v) for v in args.mesh.split(","))
    mesh = make_mesh(MeshSpec(data=data, fsdp=fsdp, expert=expert, tensor=tensor))
    platform = jax.devices()[0].platform
    print(f"device: {jax.devices()[0].device_kind} x {len(jax.devices())} ({platform}); "
          f"jax {jax.__version__}; mesh {dict(mesh.shape)}; {shape}; {args.dtype}")
    rows = []
    for mode in args.modes.split(","):
        if mode == "ragged" and platform == "cpu":
            print(f"{mode:>11}: skipped (XLA:CPU cannot compile ragged_all_to_all)")
            continue
        step, step_args = _step(mode, mesh, shape, jnp.dtype(args.dtype))
        moved = collective_bytes(step.lower(*step_args).compile().as_text())
        (_, dropped) = step(*step_args)
        rows.append(dict(mode=mode, ms=_time(step, step_args, args.repeats),
                         bytes_moved=sum(moved.values()), by_op=moved,
                         dropped=int(dropped)))
    base = rows[0]
    print(f"{'mode':>11} {'ms':>9} {'x none':>7} {'MiB moved':>10} {'x none':>7} {'dropped':>8}")
    for row in rows:
        row["time_ratio"] = row["ms"] / base["ms"]
        row["bytes_ratio"] = row["bytes_moved"] / max(base["bytes_moved"], 1)
        print(f"{row['mode']:>11} {row['ms']:9.1f} {row['time_ratio']:7.2f} "
              f"{row['bytes_moved'] / 2**20:10.2f} {row['bytes_ratio']:7.2f} {row['dropped']:8d}")
    if args.json:
        result = dict(device=jax.devices()[0].device_kind, platform=platform,
                      num_devices=len(jax.devices()), jax=jax.__version__,
                      mesh=dict(mesh.shape), shape=shape, dtype=args.dtype, rows=rows)
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
