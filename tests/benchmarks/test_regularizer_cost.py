"""benchmarks/regularizer_overhead.py --cost at a tiny width: XLA counts positive FLOPs for the
train step, and the specialization + coupling losses add to them."""

import importlib.util
import pathlib

import jax

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _benchmark():
    path = ROOT / "benchmarks" / "regularizer_overhead.py"
    spec = importlib.util.spec_from_file_location("regularizer_overhead", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cost_mode_counts_the_losses_flops():
    bench = _benchmark()
    row = dict(bench.COST_ROWS["tiny"], batch=8)  # the tests' 8 CPU devices split the batch
    with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats and int32 steps
        result = bench.cost_row("tiny", row, rounds=0, timed=False, variants=("lb", "lb+sp+cp"))
    lb = result["variants"]["lb"]
    # (the tests' XLA flags, no optimisation passes, expand scatters into while loops, whose
    # bodies XLA counts once: the benchmark's own compiles have none, `complete` says so)
    assert isinstance(result["complete"], bool)
    assert lb["flops_unlogged"] > 0 and lb["bytes_unlogged"] > 0
    assert result["ratios"]["lb+sp+cp"]["flops"] > 1.0
    assert result["ratios"]["lb+sp+cp"]["bytes"] > 1.0
    assert 0 < result["k_over_3d"] < 1
    assert "| tiny" in bench.format_cost_table([result])
