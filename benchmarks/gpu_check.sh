#!/usr/bin/env bash
# Everything only a GPU can show, in one command (under 8 minutes on one H100/H200):
#   1. pytest -m gpu: the Pallas kernels compiled and run on the GPU against their references;
#   2. benchmarks/kernels.py: each kernel against its XLA reference (time, GB/s, roofline);
#   3. benchmarks/moe_block.py --size gpu: the MoE block per engine in bf16, dropless through
#      ragged_dot and (when installed) tokamax;
#   4. 200 steps of configs/gpu_100m.py (a ~110M-parameter MoE, bf16): tokens/s and MFU;
#   5. benchmarks/regularizer_overhead.py --cost at paper widths (d=1024 and 2048, bf16, 4 x 2048
#      tokens): XLA:GPU's FLOPs and bytes of a train step, lb vs lb + sp + cp, and the step
#      times interleaved (10 rounds; a few minutes, mostly compiling; not yet run on a GPU).
# Results go to benchmarks/results/*_gpu.json and benchmarks/results/gpu_check.json.
#
# Usage: benchmarks/gpu_check.sh [--dry-run]
#   --dry-run: the same steps at toy sizes on whatever device there is (CPU included), to
#   check the script itself; results go to $OUT_DIR (default: a temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
DRY_RUN=0
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1
if [[ $DRY_RUN == 1 ]]; then
  # toy programs are all compilation: compile them without XLA's expensive passes
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true --xla_cpu_use_fusion_emitters=false"
  OUT_DIR="${OUT_DIR:-$(mktemp -d)}"
  SIZE=(--size tiny --repeats 2)
  KERNELS=(--quick --repeats 2)
  COST=(--rows tiny --time-rows tiny --repeats 2)
  TRAIN=(--config.train.steps=2 --config.train.batch_size=2 --config.train.seq_len=32
         --config.model.num_layers=2 --config.model.d_model=64 --config.model.num_heads=2
         --config.model.num_kv_heads=2 --config.model.d_ff=128 --config.model.moe.d_hidden=64
         --config.train.log_every=1 --config.train.eval_batches=1 --config.train.progress=False)
else
  OUT_DIR="${OUT_DIR:-benchmarks/results}"
  SIZE=(--size gpu --grouped-matmul auto,ragged_dot)
  KERNELS=()
  COST=(--rows d1024,d2048 --time-rows d1024,d2048 --repeats 10)
  TRAIN=(--config.train.progress=False)
fi
mkdir -p "$OUT_DIR"
WORKDIR="$(mktemp -d)"
started=$(date +%s)

set +e
"$PYTHON" -m pytest -q -m gpu tests/kernels -p no:cacheprovider > "$OUT_DIR/gpu_pytest.txt" 2>&1
pytest_status=$?
set -e
"$PYTHON" benchmarks/kernels.py "${KERNELS[@]}" --json "$OUT_DIR/kernels_gpu.json"
"$PYTHON" benchmarks/moe_block.py "${SIZE[@]}" --json "$OUT_DIR/moe_block_gpu.json"
"$PYTHON" -m moejax.cli.train --config configs/gpu_100m.py --workdir "$WORKDIR/run" "${TRAIN[@]}"
"$PYTHON" benchmarks/regularizer_overhead.py --cost "${COST[@]}" --variants lb,lb+sp+cp \
  --json "$OUT_DIR/regularizer_cost_gpu.json"

"$PYTHON" - "$OUT_DIR" "$WORKDIR/run" "$pytest_status" "$started" <<'PY'
import json, pathlib, sys, time
import jax
out, run, status, started = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
last = rows[-1]
summary = {
    "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}", "jax": jax.__version__,
    "pytest_gpu_exit_status": status,  # 0: every GPU test passed (5: none collected)
    "train": {key: last.get(key) for key in ("step", "loss", "tokens_per_s", "step_ms",
                                             "tflops_per_device", "mfu")},
    # lb + sp + cp over lb alone: XLA's FLOPs and bytes, and the step time where timed
    "regularizer_cost": {
        row["name"]: {"flops": row["ratios"]["lb+sp+cp"]["flops"],
                      "bytes": row["ratios"]["lb+sp+cp"]["bytes"], "time": row.get("time_ratio")}
        for row in json.loads((out / "regularizer_cost_gpu.json").read_text())["rows"]},
    "seconds": round(time.time() - started),
}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
PY
