"""How well the hardware is used: throughput, model FLOPs per second per device, MFU, where
the wall time goes (`RunClock`), and what the run holds (`start_lines`).

`tokens_per_s` is over the training steps of the logging interval only (data + step, from
`RunClock`): not the compiling first step, evaluation, checkpoint saves or logging.
`mfu = tflops_per_device / peak`, with the numerator from `models.param_count.
model_flops_per_token` and the peak from PEAK_TFLOPS (dense bf16 matmul TFLOP/s per chip, the
vendors' figures without sparsity) matched against `jax.devices()[0].device_kind`, or
`train.peak_tflops`. An unknown device (e.g. a CPU) without `train.peak_tflops` logs
`tflops_per_device` only.
"""

from __future__ import annotations

import contextlib
import time

import jax
import numpy as np
from flax import nnx

from moejax.models.param_count import count_parameters
from moejax.reporting import metrics as schema
from moejax.train import plan

# device_kind substring -> peak dense bf16 TFLOP/s per chip; first match wins (so "TPU v5
# lite", v5e, comes before "TPU v5", v5p)
PEAK_TFLOPS = (
    ("H100", 989.4),
    ("H200", 989.4),
    ("A100", 312.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5", 459.0),
    ("TPU v6 lite", 918.0),
)


def peak_tflops(device_kind: str | None = None, override: float | None = None) -> float | None:
    """The peak of this device kind (default: jax.devices()[0]'s), `override` if given, or
    None when unknown."""
    if override:
        return float(override)
    kind = jax.devices()[0].device_kind if device_kind is None else device_kind
    return next((peak for name, peak in PEAK_TFLOPS if name in kind), None)


def utilisation(flops_per_token: float, tokens_per_s: float, peak: float | None) -> dict:
    """{"tflops_per_device", and "mfu" when the peak is known} for metrics.jsonl."""
    per_device = flops_per_token * tokens_per_s / jax.device_count() / 1e12
    out = {schema.TFLOPS_PER_DEVICE: per_device}
    if peak:
        out[schema.MFU] = per_device / peak
    return out


PARTS = ("compile", "step", "eval", "checkpoint")  # where RunClock counts the wall time


class RunClock:
    """Where a run's wall time goes, since it (re)started: the compiling first step, the
    training steps (data + step; each logging interval's give its rates), evaluation and
    checkpoint saves; the rest (start-up, logging) is counted only in the wall time.

    `clock`: seconds, monotonic (a fake one in tests). `tokens_per_step`, `flops_per_token`,
    `peak`: what the rates are per (`utilisation`).
    """

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak: float | None,
                 clock=time.perf_counter):
        self.tokens_per_step, self.flops_per_token, self.peak = (tokens_per_step,
                                                                 flops_per_token, peak)
        self.now = clock
        self.started = clock()
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.steps = []  # seconds of each training step since the run (re)started
        self.interval = 0  # index into `steps` of the logging interval's first step

    def add(self, part: str, since: float) -> float:
        """Counts `now() - since` seconds as `part`; returns them."""
        seconds = self.now() - since
        self.seconds[part] += seconds
        if part == "step":
            self.steps.append(seconds)
        return seconds

    @contextlib.contextmanager
    def timed(self, part: str):
        """Counts the time inside the block as `part`."""
        since = self.now()
        try:
            yield
        finally:
            self.add(part, since)

    def tokens_per_s(self) -> float | None:
        """Tokens per second of the logging interval's training steps; None without one."""
        seconds = sum(self.steps[self.interval:])
        steps = len(self.steps) - self.interval
        return self.tokens_per_step * steps / seconds if steps and seconds > 0 else None

    def row(self) -> dict:
        """A logged row's rates and times, and the next logging interval starts: tokens_per_s,
        tflops_per_device, mfu (absent for an interval with no training step: the compiling
        one only), step_ms (median), time/compile_s, time/eval_s, time/checkpoint_s, goodput
        (training-step seconds / wall seconds)."""
        out, rate = {}, self.tokens_per_s()
        if rate is not None:
            out[schema.TOKENS_PER_S] = rate
            out.update(utilisation(self.flops_per_token, rate, self.peak))
        if self.steps:
            out[schema.STEP_MS] = 1e3 * float(np.median(self.steps))
        out.update({schema.TIME_COMPILE_S: self.seconds["compile"],
                    schema.TIME_EVAL_S: self.seconds["eval"],
                    schema.TIME_CHECKPOINT_S: self.seconds["checkpoint"],
                    schema.GOODPUT: self.seconds["step"] / max(self.now() - self.started, 1e-9)})
        self.interval = len(self.steps)
        return out


def start_lines(model_spec, mesh, model, optimizer) -> list[str]:
    """What the start of a run prints: the devices, the mesh, the parameter counts and the
    parameters' and optimizer state's bytes per device (`plan.state_bytes` of the live state:
    one device's shards)."""
    count = count_parameters(model_spec)
    state = plan.state_bytes(*nnx.split((model, optimizer)))
    axes = ", ".join(f"{n} {s}" for n, s in zip(mesh.axis_names, mesh.devices.shape,
                                                strict=True))
    return [f"devices: {jax.device_count()} x {jax.devices()[0].device_kind} in "
            f"{jax.process_count()} process(es)",
            f"mesh: {axes} ({_devices(mesh.devices.size, jax.device_count())})",
            f"parameters: {count.total:,} total, {count.active:,} active per token",
            plan._state_line(state).strip()]  # as --dry-run's plan prints it


def _devices(used: int, total: int) -> str:
    """"8 devices", "1 device of 8": what the mesh uses of the devices there are."""
    return f"{used} device{'s' if used > 1 else ''}{'' if used == total else f' of {total}'}"
