"""Fixtures of the kernel tests."""

import pytest

from moejax.kernels import _common


@pytest.fixture
def tpu_target(monkeypatch):
    """Traces the kernels as on a TPU (`_common.backend()` says "tpu"): the TPU code paths and
    Mosaic's compiler parameters. Lowering then targets Mosaic (`lowering_platforms=("tpu",)`);
    running needs `interpret=pltpu.InterpretParams()` (Pallas's TPU interpret mode) here."""
    monkeypatch.setattr(_common, "backend", lambda: "tpu")
