"""Is the input ever the bottleneck? Text tokenized by the pipeline vs pre-tokenized shards.

Usage:
  python benchmarks/input_pipeline.py [--json PATH] [--rounds N] [--steps K]

The default config's train step (configs/default.py, its model and batch) is fed by four
inputs of the same documents (the built-in corpus's `--domains`): the text source tokenized by
the pipeline when the run starts ("text", `data.tokenizer` bytes or a BPE trained here with the
`tokenizers` library) and the same text prepared as ArrayRecord shards ("shards"). For each it
reports the one-off start-up (reading and tokenizing, or opening the shards), the time to
produce one batch (the grain iterator alone, median over the rounds), and the time of K
trainer iterations (next batch, then the step, blocked on), run interleaved across the inputs
for N rounds; the ratio is the median of per-round ratios to "shards, bytes". A ratio near 1
means that the step, not the input, sets the pace.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import tempfile
import time

import jax
import numpy as np

from moejax.data import pipeline
from moejax.data.shards import prepare
from moejax.data.tokenizer import train_bpe
from moejax.train import step
from moejax.train.config_files import load_config
from moejax.train.specs import specs_from_config
from moejax.train.state import mesh_and_engine, sharded_model_and_optimizer

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py"


def _parse():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None, help="write results to this path")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=4, help="trainer iterations per round")
    parser.add_argument("--domains", default="email,json,http,xml,html,urllib,logging,csv",
                        help="the built-in corpus's domains to read (comma-separated)")
    parser.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary")
    return parser.parse_args()


def _inputs(config, scratch: pathlib.Path, vocab: int) -> dict:
    """name -> (DataSpec, start-up seconds)."""
    text = pipeline.data_spec_from_config(config.data)
    texts = [d.text.decode("utf-8", "replace") for d in pipeline.document_table(text).documents]
    bpe = str(train_bpe(texts, scratch / "bpe", vocab))
    specs = {}
    for name, tokenizer in (("bytes", "bytes"), ("bpe", bpe)):
        started = time.perf_counter()
        spec = pipeline.data_spec_from_config({**config.data.to_dict(), "tokenizer": tokenizer})
        pipeline.num_sequences(spec, "train", seq_len=config.train.seq_len)  # reads, tokenizes
        specs[f"text, {name}"] = (spec, time.perf_counter() - started)
        out = scratch / f"shards_{name}"
        prepare(spec, out, workers=2, progress=False)
        started = time.perf_counter()
        shards = pipeline.data_spec_from_config({
            "corpus": "arrayrecord", "paths": (str(out),), "tokenizer": tokenizer,
            "num_threads": config.data.num_threads,
            "prefetch_buffer_size": config.data.prefetch_buffer_size})
        pipeline.num_sequences(shards, "train", seq_len=config.train.seq_len)
        specs[f"shards, {name}"] = (shards, time.perf_counter() - started)
    return specs


def _batches(spec, config):
    return iter(pipeline.make_dataset(spec, "train", seq_len=config.train.seq_len,
                                      batch_size=config.train.batch_size, seed=0))


def main():
    args = _parse()
    config = load_config(DEFAULT_CONFIG)
    config.data.domains = tuple(args.domains.split(","))
    config.model.vocab_size = max(config.model.vocab_size, args.vocab)
    specs = specs_from_config(config)
    device = f"{jax.devices()[0].device_kind} x{jax.device_count()}"
    with tempfile.TemporaryDirectory() as scratch:
        inputs = _inputs(config, pathlib.Path(scratch), args.vocab)
        mesh, engine = mesh_and_engine(specs)
        model, optimizer = sharded_model_and_optimizer(specs.model, specs.train, 0, mesh, engine)
        iterators = {name: _batches(spec, config) for name, (spec, _) in inputs.items()}

        def trainer_iterations(batches):
            for _ in range(args.steps):
                batch = next(batches)
                jax.block_until_ready(step.train_step(
                    model, optimizer, batch["tokens"], specs.loss,
                    specs.train.grad_accumulation, np.bool_(False), segments=batch["segments"]))

        trainer_iterations(iterators["shards, bytes"])  # compiles
        loop, fetch = {name: [] for name in inputs}, {name: [] for name in inputs}
        for _ in range(args.rounds):
            for name, batches in iterators.items():
                started = time.perf_counter()
                trainer_iterations(batches)
                loop[name].append((time.perf_counter() - started) / args.steps)
                started = time.perf_counter()
                for _ in range(args.steps):
                    next(batches)
                fetch[name].append((time.perf_counter() - started) / args.steps)
    base = loop["shards, bytes"]
    rows = []
    print(f"device: {device}, jax {jax.__version__}; default config, domains {args.domains}")
    print(f"{'input':<14} {'start-up s':>10} {'batch ms':>9} {'iteration ms':>13} "
          f"{'vs shards, bytes':>17}")
    for name, (_, startup) in inputs.items():
        ratio = statistics.median(a / b for a, b in zip(loop[name], base, strict=True))
        row = {"input": name, "startup_s": startup,
               "batch_ms": 1e3 * statistics.median(fetch[name]),
               "iteration_ms": 1e3 * statistics.median(loop[name]), "ratio": ratio}
        rows.append(row)
        print(f"{name:<14} {startup:>10.2f} {row['batch_ms']:>9.2f} "
              f"{row['iteration_ms']:>13.1f} {ratio:>17.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "jax": jax.__version__, "domains": args.domains,
                       "vocab": args.vocab, "rounds": args.rounds, "steps": args.steps,
                       "rows": rows}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
