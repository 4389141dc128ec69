"""How well the hardware is used: model FLOPs per second per device, and MFU.

`mfu = tflops_per_device / peak`, with the numerator from `models.param_count.
model_flops_per_token` and the peak from PEAK_TFLOPS (dense bf16 matmul TFLOP/s per chip, the
vendors' figures without sparsity) matched against `jax.devices()[0].device_kind`, or
`train.peak_tflops`. An unknown device (e.g. a CPU) without `train.peak_tflops` logs
`tflops_per_device` only.
"""

from __future__ import annotations

import jax

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
    out = {"tflops_per_device": per_device}
    if peak:
        out["mfu"] = per_device / peak
    return out
