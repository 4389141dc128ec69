"""Throughput of `moejax-prepare` (moejax.data.shards.prepare): MB/s of text and tokens/s.

Usage:
  python benchmarks/prepare.py [--json PATH] [--repeats N] [--workers 0,1,2] [--vocab V] ...

The corpus is the standard library without its tests (data.corpus="stdlib",
exclude_domains=("test*",), about 11 MB of Python). Two tokenizers: "bytes", and a byte-level
BPE of `--vocab` ids that the `tokenizers` library trains on the same corpus first (not timed).
Each (tokenizer, workers) variant prepares the whole corpus (both splits) into a temporary
directory; the variants run interleaved (bytes/w0, bytes/w1, ..., bpe/w2, bytes/w0, ...) for N
rounds, and each row reports the median time. A time is the whole `prepare` call: the
outline pass, starting the worker processes (workers=0: none, the tokenizer runs in this
process), tokenizing and writing. The standard library is read from disk once per process
(the source caches it), so later rounds time tokenizing and writing, not the disk.
MB/s counts the UTF-8 bytes of the text (10^6 bytes per MB). The "start-up" rows time a pool
of that many workers answering one empty item each (spawn, `import moejax`, load "bytes"), in
the same rounds: a variant's time less its pool's start-up is what a larger corpus would see.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time

import tokenizers

from moejax.data.corpus import DataSpec, documents
from moejax.data.process_map import ordered_map
from moejax.data.shards import prepare
from moejax.data.tokenizer import load_tokenizer, train_bpe

DEFAULT_JSON = pathlib.Path(__file__).resolve().parent / "results" / "prepare_cpu.json"
EXCLUDE = ("test*",)


def _parse():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="write results to this path")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary size")
    return parser.parse_args()


def _train_bpe(spec: DataSpec, vocab: int, directory: pathlib.Path) -> tuple[str, float]:
    """A byte-level BPE trained on the corpus of `spec`; (its directory, training seconds)."""
    start = time.perf_counter()
    train_bpe((d.text.decode("utf-8", errors="replace") for d in documents(spec)), directory,
              vocab)
    return str(directory), time.perf_counter() - start


def _nothing(state, item):
    """A worker's answer to the start-up items."""
    return item


def _rounds(variants: dict, pools: list[int], repeats: int,
            out: pathlib.Path) -> tuple[dict, dict]:
    """Seconds per variant (and per pool start-up) over `repeats` interleaved rounds, and each
    variant's index."""
    times = {name: [] for name in [*variants, *(f"start-up/w{w}" for w in pools)]}
    indexes = {}
    for _ in range(repeats):
        for name, (spec, workers) in variants.items():
            start = time.perf_counter()
            indexes[name] = prepare(spec, out / name, overwrite=True, workers=workers,
                                    progress=False)
            times[name].append(time.perf_counter() - start)
        for workers in pools:
            start = time.perf_counter()
            list(ordered_map(_nothing, range(workers), setup=load_tokenizer,
                             setup_args=("bytes",), workers=workers))
            times[f"start-up/w{workers}"].append(time.perf_counter() - start)
    return times, indexes


def main():
    args = _parse()
    worker_counts = [int(w) for w in args.workers.split(",")]
    base = DataSpec(corpus="stdlib", exclude_domains=EXCLUDE)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="moejax-prepare-bench-") as tmp:
        bpe, train_s = _train_bpe(base, args.vocab, pathlib.Path(tmp) / "bpe")
        tokenizers_used = {"bytes": "bytes", f"bpe{args.vocab}": bpe}
        variants = {f"{label}/w{w}": (DataSpec(corpus="stdlib", exclude_domains=EXCLUDE,
                                               tokenizer=path), w)
                    for label, path in tokenizers_used.items() for w in worker_counts}
        pools = [w for w in worker_counts if w > 0]
        times, indexes = _rounds(variants, pools, args.repeats, pathlib.Path(tmp))
    cpus = os.cpu_count()
    print(f"cpu x{cpus} ({platform.processor() or platform.machine()}), load average "
          f"{load[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end; tokenizers "
          f"{tokenizers.__version__}; BPE trained in {train_s:.1f} s")
    print(f"corpus: stdlib without {EXCLUDE}; rounds: {args.repeats}; medians")
    print(f"{'tokenizer':<10} {'workers':>7} {'median s':>9} {'MB/s':>7} {'Mtok/s':>7} "
          f"{'bytes/tok':>9} {'tokens':>10}")
    rows = []
    for name, (_, workers) in variants.items():
        splits = indexes[name]["splits"].values()
        nbytes, ntokens = sum(s["bytes"] for s in splits), sum(s["tokens"] for s in splits)
        seconds = statistics.median(times[name])
        row = {"tokenizer": name.split("/")[0], "vocab_size": indexes[name]["vocab_size"],
               "workers": workers, "median_s": seconds,
               "mb_per_s": nbytes / seconds / 1e6, "tokens_per_s": ntokens / seconds,
               "bytes": nbytes, "tokens": ntokens, "documents": sum(s["documents"] for s in splits),
               "bytes_per_token": nbytes / ntokens, "times_s": times[name]}
        rows.append(row)
        print(f"{row['tokenizer']:<10} {workers:>7} {seconds:>9.2f} {row['mb_per_s']:>7.2f} "
              f"{row['tokens_per_s'] / 1e6:>7.2f} {row['bytes_per_token']:>9.2f} {ntokens:>10}")
    startup = {w: statistics.median(times[f"start-up/w{w}"]) for w in pools}
    for workers, seconds in startup.items():
        print(f"{'start-up':<10} {workers:>7} {seconds:>9.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": f"cpu x{cpus}", "tokenizers": tokenizers.__version__,
                       "python": platform.python_version(), "load_average_start": load[0],
                       "load_average_end": os.getloadavg()[0],
                       "corpus": {"corpus": "stdlib", "exclude_domains": list(EXCLUDE)},
                       "bpe": {"vocab": args.vocab, "train_s": train_s},
                       "rounds": args.repeats, "rows": rows,
                       "pool_startup": [{"workers": w, "median_s": startup[w],
                                         "times_s": times[f"start-up/w{w}"]} for w in pools]},
                      f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
