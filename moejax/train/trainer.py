"""train_and_evaluate(config, workdir): the whole training run, read top to bottom."""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
import optax
from flax import nnx

from moejax.layers.decoder import Decoder
from moejax.train import data, step
from moejax.train.specs import specs_from_config


def train_and_evaluate(config, workdir) -> dict:
    """Trains config.model on the built-in corpus; writes metrics.jsonl to workdir.

    Returns the last logged metrics.
    """
    workdir = pathlib.Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    train_cfg = config.train

    # Data.
    train_stream = data.stdlib_stream("train")
    val_stream = data.stdlib_stream("validation")
    rng = np.random.default_rng(config.seed)
    length = train_cfg.seq_len + 1

    # Model and optimizer.
    spec, loss_spec = specs_from_config(config)
    model = Decoder(spec, rngs=nnx.Rngs(config.seed))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, train_cfg.learning_rate, train_cfg.warmup_steps, train_cfg.steps
    )
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule, weight_decay=train_cfg.weight_decay))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    # Loop.
    metrics_path = workdir / "metrics.jsonl"
    last, start = {}, time.perf_counter()
    with metrics_path.open("w") as log:
        for i in range(1, train_cfg.steps + 1):
            tokens = data.random_windows(train_stream, train_cfg.batch_size, length, rng)
            metrics = step.train_step(model, optimizer, tokens, loss_spec)
            if i % train_cfg.log_every and i != train_cfg.steps:
                continue
            val = [step.eval_step(model, data.random_windows(val_stream, train_cfg.batch_size,
                                                             length, rng), loss_spec)
                   for _ in range(train_cfg.eval_batches)]
            last = {"step": i, **{k: np.asarray(v).tolist() for k, v in metrics.items()},
                    "val_loss": float(np.mean([float(v["val_loss"]) for v in val]))}
            last["val_bits_per_byte"] = last["val_loss"] / np.log(2.0)
            last["tokens_per_s"] = i * train_cfg.batch_size * train_cfg.seq_len / (
                time.perf_counter() - start)
            log.write(json.dumps(last) + "\n")
            log.flush()
            print(f"step {i:5d}  loss {last['loss']:.3f}  val_loss {last['val_loss']:.3f}  "
                  f"({last['val_bits_per_byte']:.2f} bits/byte)  {last['tokens_per_s']:.0f} tok/s",
                  flush=True)
    return last
