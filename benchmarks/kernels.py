"""Each kernel against its XLA reference: median time, achieved GB/s, fraction of a roofline.

Usage:
  python benchmarks/kernels.py [--quick] [--sizes TxExKxF,...] [--implementation auto|pallas|jnp]
      [--interpret-rows] [--dtype float32|bfloat16] [--peak-gbps G] [--repeats N] [--json PATH]

Kernels and their references (forward, and forward + backward of a weighted sum):
- topk_dispatch(logits [T, E], k) vs softmax + jax.lax.top_k + a stable argsort of the
  flattened experts + one-hot counts (what the router and dispatch plan do without the kernel).
- pairwise_cosine(z [T, K, F]) vs normalise + einsum("TKF,TJF->TKJ").
- pairwise_cosine_sorted(z_sorted [T*K, F], index [T, K]) vs gather to token order + the same.
Sizes: every T x E x K x F of T in {4096, 65536}, E in {64, 256}, K in {2, 8}, F in {256, 1408}
(topk reads T, E, K; the cosines T, K, F); `--quick` is a small CPU subset. GB/s counts the
minimal HBM traffic (inputs read once, outputs written once; backward adds reading the inputs
again and writing their gradient). The roofline is `--peak-gbps`: by default 3350 (H100 SXM)
or 4800 (H200) on GPU, and on CPU a bandwidth measured here (a jitted x * 2 over 256 MB).
On CPU the Pallas kernels only run in interpret mode, which says nothing about GPU speed:
those rows appear only with --interpret-rows, marked "interpret".
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from moejax.kernels import pairwise_cosine, pairwise_cosine_sorted, topk_dispatch

FULL_SIZES = list(itertools.product((4096, 65536), (64, 256), (2, 8), (256, 1408)))
QUICK_SIZES = [(4096, 64, 2, 256), (4096, 256, 8, 256)]
GPU_PEAK_GBPS = {"H200": 4800.0, "H100": 3350.0}  # HBM bandwidth per the data sheets
NOTES = {
    True: "CPU: inputs of a few MB stay in cache, so a row can beat the DRAM roofline; "
          "'pallas (interpret)' rows run the kernels' interpreter, not a compiled kernel",
    False: "GPU: Pallas kernels compiled through the Triton backend",
}
SLOW_RUN_S = 2.0  # rows slower than this per run are timed over at most 3 runs


def _parse():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}")
    parser.add_argument("--sizes", default=None, help="comma-separated TxExKxF, e.g. 4096x64x2x256")
    parser.add_argument("--implementation", choices=("auto", "pallas", "jnp"), default="auto",
                        help="kernel rows: auto = pallas on GPU, jnp on CPU")
    parser.add_argument("--interpret-rows", action="store_true",
                        help="on CPU, also time the Pallas kernels in interpret mode (slow)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="dtype of z (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--peak-gbps", type=float, default=None, help="roofline bandwidth")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=None, help="write results to this path")
    args = parser.parse_args()
    if args.sizes:
        sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
        if any(len(s) != 4 for s in sizes):
            parser.error(f"--sizes={args.sizes!r}: each entry must be TxExKxF")
    else:
        sizes = QUICK_SIZES if args.quick else FULL_SIZES
    on_gpu = jax.default_backend() == "gpu"
    args.dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
    return args, sizes


def _peak(args) -> tuple[float, str]:
    """The roofline bandwidth in GB/s and where it comes from."""
    if args.peak_gbps is not None:
        return args.peak_gbps, "stated (--peak-gbps)"
    if jax.default_backend() == "gpu":
        kind = jax.devices()[0].device_kind
        name = next((n for n in GPU_PEAK_GBPS if n in kind), "H100")
        return GPU_PEAK_GBPS[name], f"data sheet ({name} HBM)"
    x = jnp.ones((64 * 1024 * 1024,), jnp.float32)  # 256 MB
    ms = _median_ms(jax.jit(lambda x: x * 2.0), (x,), 5)[0]
    return 2 * x.nbytes / ms / 1e6, "measured (jitted x * 2 over 256 MB, read + write)"


def _median_ms(fn, args, repeats: int) -> tuple[float, int]:
    """Median ms of fn(*args) after compile and one warm-up run; also the run count."""
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    if time.perf_counter() - start > SLOW_RUN_S:
        repeats = min(repeats, 3)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), repeats


# ----------------------------------------------------------------------------- references


def _xla_topk(logits: jax.Array, k: int):
    """softmax + lax.top_k + stable argsort + one-hot counts: gates, idx, counts, positions."""
    tokens, experts = logits.shape
    picked, idx = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), k)
    gates = picked / (picked.sum(-1, keepdims=True) + 1e-20)
    flat = idx.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    counts = jax.nn.one_hot(flat, experts, dtype=jnp.int32).sum(0, dtype=jnp.int32)
    start = jnp.cumsum(counts, dtype=jnp.int32) - counts
    slots = jnp.arange(tokens * k, dtype=jnp.int32)
    position = jnp.zeros_like(slots).at[order].set(slots - start[flat[order]])
    sorted_index = jnp.zeros_like(slots).at[order].set(slots)
    return gates, idx, counts, position.reshape(tokens, k), sorted_index.reshape(tokens, k)


def _xla_cosine(z: jax.Array) -> jax.Array:
    """normalise + einsum."""
    z = z.astype(jnp.float32)
    unit = z / jnp.sqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), 1e-24))
    return jnp.einsum("TKF,TJF->TKJ", unit, unit)


def _xla_cosine_sorted(z_sorted: jax.Array, index: jax.Array) -> jax.Array:
    """gather to token order + normalise + einsum."""
    return _xla_cosine(jnp.take(z_sorted, index, axis=0, mode="fill", fill_value=0))


# ----------------------------------------------------------------------------- cases


def _variants(args) -> list[tuple[str, dict]]:
    """(label, kernel options) of the kernel rows to time besides the references."""
    on_cpu = jax.default_backend() == "cpu"
    variants = [(args.implementation, dict(implementation=args.implementation))]
    if args.implementation == "auto":
        variants = [("jnp" if on_cpu else "pallas", dict(implementation="auto"))]
    if on_cpu and args.interpret_rows:
        variants.append(("pallas (interpret)", dict(implementation="pallas", interpret=True)))
    return variants


def _topk_cases(size, args):
    """(name, shape, inputs, forward bytes, extra backward bytes, [(label, fwd, loss)])."""
    tokens, experts, k, _ = size
    logits = jax.random.normal(jax.random.key(0), (tokens, experts), jnp.float32)
    weights = jnp.linspace(1.0, 2.0, k, dtype=jnp.float32)
    read, written = logits.nbytes, tokens * k * 4 * 4 + experts * 4
    backward = 2 * logits.nbytes + tokens * k * 8
    rows = [("xla top_k+argsort", functools.partial(_xla_topk, k=k))]
    rows += [(label, functools.partial(_topk_tuple, k=k, **options))
             for label, options in _variants(args)]
    # the loss keeps the integer outputs as aux, so that the step computes them too
    rows = [(label, fwd, lambda x, fwd=fwd: _gates_loss(fwd(x), weights))
            for label, fwd in rows]
    shape = f"T={tokens} E={experts} k={k}"
    return "topk_dispatch", shape, (logits,), read + written, backward, rows


def _gates_loss(outputs, weights):
    return jnp.sum(outputs[0] * weights), outputs[1:]


def _topk_tuple(logits, *, k, **options):
    out = topk_dispatch(logits, k, **options)
    return (out.gates, out.expert_idx, out.tokens_per_expert, out.position_in_expert,
            out.expert_sorted_index)


def _cosine_cases(size, args, *, sorted_layout: bool):
    """As `_topk_cases`, for pairwise_cosine or pairwise_cosine_sorted (z_sorted [T*K, F])."""
    tokens, _, k, features = size
    dtype = jnp.dtype(args.dtype)
    key_z, key_perm = jax.random.split(jax.random.key(1))
    z = jax.random.normal(key_z, (tokens * k, features), jnp.float32).astype(dtype)
    weights = jnp.linspace(-1.0, 1.0, k * k, dtype=jnp.float32).reshape(k, k)
    if sorted_layout:
        index = jax.random.permutation(key_perm, tokens * k).astype(jnp.int32).reshape(tokens, k)
        inputs, ref, kernel = (z, index), _xla_cosine_sorted, pairwise_cosine_sorted
    else:
        inputs, ref, kernel = (z.reshape(tokens, k, features),), _xla_cosine, pairwise_cosine
    read = z.nbytes + (tokens * k * 4 if sorted_layout else 0)
    written = tokens * k * k * 4
    rows = [("xla gather+normalise+einsum" if sorted_layout else "xla normalise+einsum", ref,
             lambda *a: (jnp.sum(ref(*a) * weights), ()))]
    for label, options in _variants(args):
        fwd = functools.partial(kernel, **options)
        rows.append((label, fwd, lambda *a, fwd=fwd: (jnp.sum(fwd(*a) * weights), ())))
    name = "pairwise_cosine_sorted" if sorted_layout else "pairwise_cosine"
    shape = f"T={tokens} k={k} F={features} {dtype.name}"
    return name, shape, inputs, read + written, 2 * z.nbytes, rows


# ----------------------------------------------------------------------------- running


def _check(name: str, want, got) -> str:
    """'ok' when a kernel row's forward outputs match the reference's, else what differs."""
    for i, (a, b) in enumerate(zip(jax.tree.leaves(want), jax.tree.leaves(got))):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        exact = name == "topk_dispatch" and i > 0  # indices, counts and positions
        if not (np.array_equal(a, b) if exact else np.allclose(a, b, rtol=1e-2, atol=1e-3)):
            return f"MISMATCH in output {i}"
    return "ok"


def _run_case(case, args, peak_gbps: float) -> list[dict]:
    """Times forward and forward + backward of every row of one case."""
    name, shape, inputs, fwd_bytes, bwd_bytes, rows = case
    results, reference_out = [], None
    for label, fwd, loss in rows:
        fwd_jit = jax.jit(fwd)
        out = fwd_jit(*inputs)
        check = "reference" if reference_out is None else _check(name, reference_out, out)
        reference_out = out if reference_out is None else reference_out
        step = jax.jit(jax.grad(loss, has_aux=True))
        for mode, fn, nbytes in (("fwd", fwd_jit, fwd_bytes),
                                 ("fwd+bwd", step, fwd_bytes + bwd_bytes)):
            ms, runs = _median_ms(fn, inputs, args.repeats)
            gbps = nbytes / ms / 1e6
            results.append(dict(kernel=name, shape=shape, impl=label, mode=mode, ms=ms,
                                gbps=gbps, roofline=gbps / peak_gbps, runs=runs, check=check,
                                bytes=nbytes))
        print(f"  done {name} {shape} {label}", flush=True)
    return results


def _print_table(rows: list[dict]) -> None:
    header = (f"{'kernel':<23} {'shape':<27} {'implementation':<28} {'pass':<8} {'median ms':>10}"
              f" {'GB/s':>8} {'roofline':>9} {'runs':>5}  check")
    print(header)
    for r in rows:
        print(f"{r['kernel']:<23} {r['shape']:<27} {r['impl']:<28} {r['mode']:<8} "
              f"{r['ms']:>10.3f} {r['gbps']:>8.1f} {r['roofline']:>8.1%} {r['runs']:>5}  "
              f"{r['check']}")


def _device() -> str:
    device = f"{jax.devices()[0].device_kind} x{jax.device_count()}"
    if jax.default_backend() == "cpu":
        device += f" ({os.cpu_count()} cores)"
    return device


def main():
    args, sizes = _parse()
    peak_gbps, peak_source = _peak(args)
    versions = dict(python=platform.python_version(), jax=jax.__version__,
                    jaxlib=jaxlib.__version__, numpy=np.__version__)
    print(f"device: {_device()}, backend: {jax.default_backend()}, versions: {versions}")
    print(f"roofline: {peak_gbps:.1f} GB/s, {peak_source}; z dtype {args.dtype}; "
          f"median of {args.repeats} runs after compile and warm-up")
    note = NOTES[jax.default_backend() == "cpu"]
    print(f"note: {note}")
    topk_sizes = sorted({(t, e, k, 0) for t, e, k, _ in sizes})
    cosine_sizes = sorted({(t, 0, k, f) for t, _, k, f in sizes})
    cases = [_topk_cases(size, args) for size in topk_sizes]
    for sorted_layout in (False, True):
        cases += [_cosine_cases(size, args, sorted_layout=sorted_layout) for size in cosine_sizes]
    rows = []
    for case in cases:
        rows += _run_case(case, args, peak_gbps)
    _print_table(rows)
    if args.json:
        path = pathlib.Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        result = dict(device=_device(), backend=jax.default_backend(), versions=versions,
                      peak_gbps=peak_gbps, peak_source=peak_source, note=note,
                      z_dtype=args.dtype,
                      sizes=[list(s) for s in sizes], rows=rows)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
