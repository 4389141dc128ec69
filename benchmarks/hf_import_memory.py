"""Host memory of `moejax-hf import`: peak RSS against the checkpoint's size.

Writes a random bfloat16 Mixtral-shaped HF directory (sharded), then runs in fresh processes,
interleaved over rounds:
- floor: the interpreter with jax, moejax and safetensors imported (what any command costs);
- import: `moejax-hf import` of that directory (tensors read one at a time, dtype kept);
and prints, per round and as medians, each peak RSS and (import - floor) / checkpoint bytes:
about 1 means the host held the converted parameters once.

    python benchmarks/hf_import_memory.py [--layers 4 --d_model 1024 --d_hidden 3584]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile

import ml_dtypes
import numpy as np

from moejax.models.decoder import DecoderSpec
from moejax.models.hf_dir import write_hf_dir
from moejax.moe.spec import MoESpec

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "hf_import_memory_cpu.json"
FLOOR = "import jax, moejax, safetensors, orbax.checkpoint; from moejax.cli import hf"


def _peak_rss_mib(argv: list[str]) -> float:
    """Runs argv as this process's only child; its peak resident set in MiB (Linux
    ru_maxrss, in KiB, is the largest over all children, hence one per parent)."""
    subprocess.run(argv, check=True, capture_output=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _one(kind: str, hf_dir: str, scratch: str) -> float:
    """One measurement in a fresh parent, so RUSAGE_CHILDREN holds only this child."""
    out = subprocess.run([sys.executable, __file__, "--measure", kind, "--hf", hf_dir,
                          "--scratch", scratch], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d_model", type=int, default=1024)
    parser.add_argument("--d_hidden", type=int, default=3584)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--measure", choices=["floor", "import"])
    parser.add_argument("--hf")
    parser.add_argument("--scratch")
    args = parser.parse_args()
    if args.measure:  # child mode: one measurement
        argv = [sys.executable, "-c", FLOOR]
        if args.measure == "import":
            argv = [sys.executable, "-c", "import sys; from moejax.cli import hf; "
                    "sys.exit(hf.main(sys.argv))", "import", "--hf", args.hf, "--out",
                    args.scratch, "--overwrite"]
        print(_peak_rss_mib(argv))
        return

    spec = DecoderSpec(d_model=args.d_model, num_layers=args.layers, num_heads=8, num_kv_heads=8,
                       d_ff=args.d_hidden, moe=MoESpec(num_experts=args.experts, top_k=2,
                                                       d_hidden=args.d_hidden))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        from moejax.models.convert_hf import expected_shapes

        tensors = {name: (0.02 * rng.standard_normal(shape, np.float32)).astype(
            ml_dtypes.bfloat16) for name, shape in expected_shapes(spec).items()}
        checkpoint_bytes = sum(t.nbytes for t in tensors.values())
        write_hf_dir(tensors, spec, f"{tmp}/hf", dtype="bfloat16", max_shard_bytes=2**28)
        del tensors
        rows = []
        for r in range(args.rounds):
            floor = _one("floor", f"{tmp}/hf", f"{tmp}/ex")
            imported = _one("import", f"{tmp}/hf", f"{tmp}/ex")
            ratio = (imported - floor) * 2**20 / checkpoint_bytes
            rows.append({"round": r, "floor_mib": floor, "import_mib": imported,
                         "ratio": ratio})
            print(f"round {r}: floor {floor:8.0f} MiB  import {imported:8.0f} MiB  "
                  f"(import - floor) / checkpoint {ratio:.2f}", flush=True)
    median = {k: statistics.median(row[k] for row in rows)
              for k in ("floor_mib", "import_mib", "ratio")}
    print(f"checkpoint {checkpoint_bytes / 2**20:.0f} MiB bfloat16; medians: floor "
          f"{median['floor_mib']:.0f} MiB, import {median['import_mib']:.0f} MiB, "
          f"(import - floor) / checkpoint {median['ratio']:.2f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "spec": {"layers": args.layers, "d_model": args.d_model, "d_hidden": args.d_hidden,
                 "experts": args.experts}, "checkpoint_mib": checkpoint_bytes / 2**20,
        "rounds": rows, "median": median}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
