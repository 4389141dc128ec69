"""Step time of train configurations, measured interleaved: the one timing method behind every
step-time claim (`benchmarks/regularizer_overhead.py` and the experiment suites).

Each configuration's train step is compiled and warmed up first; then the steps run in turn
(A, B, C, A, B, C, ...) for a number of rounds, so that load on a shared machine falls on
every variant of a round alike, and claims are made from per-round ratios.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from moejax.parallel import batch_sharding
from moejax.train import step
from moejax.train.specs import RunSpecs
from moejax.train.state import mesh_and_engine, sharded_model_and_optimizer


def compiled_step(specs: RunSpecs) -> Callable[[], dict]:
    """One unlogged train step of a config's specs, the program the trainer runs: its mesh, its
    sharded model and optimizer, its losses and a batch of random tokens in one document
    per row (tokens and segments [B, S + 1], sharded over the batch axes); compiled and
    warmed up. (The trainer's own runs of the config compile the same program, so with a
    compilation cache, as `moejax-experiment --quick` keeps, this compiles nothing.)"""
    model_spec, loss_spec, train = specs.model, specs.loss, specs.train
    mesh, engine = mesh_and_engine(specs)
    model, optimizer = sharded_model_and_optimizer(model_spec, train, specs.seed, mesh, engine)
    rng = np.random.default_rng(specs.seed)
    shape = (train.batch_size, train.seq_len + 1)
    tokens, segments = (jax.device_put(jnp.asarray(values, jnp.int32), batch_sharding(mesh))
                        for values in (rng.integers(0, model_spec.vocab_size, shape),
                                       np.ones(shape)))

    def run():
        return step.train_step(model, optimizer, tokens, loss_spec, train.grad_accumulation,
                               np.bool_(False), segments=segments)

    for _ in range(2):
        jax.block_until_ready(run())
    return run


def interleaved_ms(steps: Mapping[str, Callable[[], object]], rounds: int) -> dict:
    """{name: [ms of each round]}: every step once per round, in order."""
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, run in steps.items():
            start = time.perf_counter()
            jax.block_until_ready(run())
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def median_ratio(times, base) -> float:
    """Median over rounds of times[r] / base[r]."""
    return statistics.median(a / b for a, b in zip(times, base, strict=True))
