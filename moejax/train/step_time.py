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

from moejax.train import step
from moejax.train.specs import specs_from_config, train_spec_from_config
from moejax.train.state import model_and_optimizer


def compiled_step(config) -> Callable[[], dict]:
    """One unlogged train step (no routing metrics) of `config`'s model, losses, optimizer
    and batch shape on random tokens, on one device; compiled and warmed up."""
    model_spec, loss_spec = specs_from_config(config)
    train = train_spec_from_config(config)
    model, optimizer = model_and_optimizer(model_spec, train, config.seed)
    rng = np.random.default_rng(config.seed)
    tokens = jnp.asarray(rng.integers(0, model_spec.vocab_size,
                                      (train.batch_size, train.seq_len + 1)), jnp.int32)

    def run():
        return step.train_step(model, optimizer, tokens, loss_spec, train.grad_accumulation,
                               np.bool_(False))

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
