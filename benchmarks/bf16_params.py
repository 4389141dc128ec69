"""bfloat16 parameters against float32: the training losses of the same short run.

Usage:
  python benchmarks/bf16_params.py [--config default] [--steps 20] [--json PATH]

Trains the config (default: configs/default.py, float32 compute) for `--steps` steps from
the same seed three times, each in a fresh temporary workdir with the trainer itself:

- "float32": `model.param_dtype="float32"` (AdamW's moments float32: 4 + 8 bytes a parameter);
- "bfloat16+master": `model.param_dtype="bfloat16"` with float32 master weights (the default
  `train.master_weights=None`; 2 + 12 bytes), whose master weights start from the float32
  run's init;
- "bfloat16": `train.master_weights=False`, pure bfloat16 (2 + 4 bytes).

Prints the loss of every step, each bfloat16 run's difference from the float32 run, and
the largest difference, the final validation loss and the median step time of each run;
writes them as JSON (default benchmarks/results/bf16_params.json). The test
`tests/train/test_master_weights.py` asserts only a loose bound on a 6-step run.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import jax

from moejax.train.config_files import load_config
from moejax.train.optim import state_bytes_per_parameter
from moejax.train.specs import specs_from_config, uses_master_weights
from moejax.train.trainer import train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> (model.param_dtype, train.master_weights)
    "float32": ("float32", None),
    "bfloat16+master": ("bfloat16", None),
    "bfloat16": ("bfloat16", False),
}


def _parse():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="default", help="a config of configs/ (name)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/bf16_params.json"))
    return parser.parse_args()


def _config(name: str, steps: int, param_dtype: str, master_weights):
    """The config for one run: every step logged, one evaluation and checkpoint at the end."""
    config = load_config(ROOT / "configs" / f"{name}.py")
    config.model.param_dtype = param_dtype
    config.train.update(steps=steps, warmup_steps=min(5, steps - 1), log_every=1,
                        eval_every=steps, eval_batches=2, checkpoint_every=steps,
                        async_checkpoint=False, progress=False, report=False,
                        eval_top1_disabled=False, master_weights=master_weights)
    return config


def _run(config) -> dict:
    """Trains `config` in a fresh workdir -> its losses per step and final numbers."""
    specs = specs_from_config(config)
    master = uses_master_weights(specs.model, specs.train)
    with tempfile.TemporaryDirectory(prefix="moejax-bf16-") as workdir:
        started = time.perf_counter()
        last = train_and_evaluate(config, workdir, specs)
        seconds = time.perf_counter() - started
        rows = [json.loads(line) for line in
                (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    param, state = state_bytes_per_parameter(specs.model.param_dtype, master)
    return {"loss": [row["loss"] for row in rows], "val_loss": last["val_loss"],
            "step_ms": last.get("step_ms"), "seconds": round(seconds, 1),
            "master_weights": master, "bytes_per_parameter": param,
            "optimizer_bytes_per_parameter": state}


def _table(results: dict) -> str:
    """Per-step losses and the differences from the float32 run, then the summary rows."""
    base = results["float32"]["loss"]
    others = [name for name in results if name != "float32"]
    lines = ["step | float32 | " + " | ".join(f"{n} | diff" for n in others),
             "--- | --- | " + " | ".join("--- | ---" for _ in others)]
    for i, loss in enumerate(base):
        cells = [f"{results[n]['loss'][i]:.4f} | {results[n]['loss'][i] - loss:+.4f}"
                 for n in others]
        lines.append(f"{i + 1} | {loss:.4f} | " + " | ".join(cells))
    lines.append("")
    for name, result in results.items():
        lines.append(f"{name:16s} max |diff| {result['max_abs_diff']:.4f}  val_loss "
                     f"{result['val_loss']:.4f}  step {result['step_ms'] or float('nan'):.0f} ms"
                     f"  bytes/param {result['bytes_per_parameter']} + "
                     f"{result['optimizer_bytes_per_parameter']} (optimizer)")
    return "\n".join(lines)


def main() -> int:
    args = _parse()
    results = {name: _run(_config(args.config, args.steps, *variant))
               for name, variant in VARIANTS.items()}
    base = results["float32"]["loss"]
    for result in results.values():
        result["max_abs_diff"] = max(abs(a - b) for a, b in zip(result["loss"], base,
                                                                strict=True))
    print(_table(results))
    out = pathlib.Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "config": args.config, "steps": args.steps, "compute_dtype": "float32",
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "date": time.strftime("%Y-%m-%d"), "variants": results}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
