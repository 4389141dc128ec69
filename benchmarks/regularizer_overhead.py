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
import dataclasses
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from moejax.models.decoder import Decoder, DecoderSpec
from moejax.moe.spec import MoESpec
from moejax.regularizers import LossSpec
from moejax.train import step

VARIANTS = {
    "lb": LossSpec(lb=1e-2),
    "lb+sp": LossSpec(lb=1e-2, sp=2e-3),
    "lb+cp": LossSpec(lb=1e-2, cp=1e-3),
    "lb+sp+cp": LossSpec(lb=1e-2, sp=2e-3, cp=1e-3),
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


def _make_step(args, loss_spec: LossSpec):
    """A compiled and warmed-up step of a fresh model: () -> metrics."""
    moe = MoESpec(num_experts=args.experts, top_k=args.top_k, d_hidden=args.d_hidden,
                  engine=args.engine, record_cosine=loss_spec.sp > 0)
    spec = DecoderSpec(d_model=args.d_model, num_layers=args.layers, num_heads=4,
                       num_kv_heads=4, d_ff=4 * args.d_model, moe=moe)
    model = Decoder(spec, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-4), wrt=nnx.Param)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 256, (args.batch, args.seq + 1)), jnp.int32)

    def run():
        return step.train_step(model, optimizer, tokens, loss_spec, 1, np.bool_(False))

    for _ in range(2):  # compile and warm up
        jax.block_until_ready(run())
    return run


def main():
    args = _parse()
    shape = {k: v for k, v in vars(args).items() if k not in ("json", "repeats")}
    device = f"{jax.devices()[0].device_kind} x{jax.device_count()}"
    print(f"device: {device}, jax {jax.__version__}")
    print(f"shape: {shape}, rounds: {args.repeats}; ratios are medians of per-round ratios")
    steps = {name: _make_step(args, loss_spec) for name, loss_spec in VARIANTS.items()}
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, run in steps.items():
            start = time.perf_counter()
            jax.block_until_ready(run())
            times[name].append((time.perf_counter() - start) * 1e3)
    rows = []
    print(f"{'variant':<10} {'median ms':>10} {'vs lb':>8}")
    for name, loss_spec in VARIANTS.items():
        ratio = statistics.median(a / b for a, b in zip(times[name], times["lb"]))
        row = {"name": name, "ms": statistics.median(times[name]), "ratio_vs_lb": ratio,
               "loss": dataclasses.asdict(loss_spec)}
        rows.append(row)
        print(f"{name:<10} {row['ms']:>10.2f} {ratio:>8.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "jax": jax.__version__, "shape": shape,
                       "rounds": args.repeats, "rows": rows}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
