"""`train.init_from`: start a run from pretrained weights (a moejax export or an HF directory).

The source's model must be the configured one: every option that changes the function
(widths, heads, experts, top-k, router kind, RoPE theta, norms, ...) must be equal, or the
run stops before training with one line naming each difference. Options of how the model
is computed or trained may differ (FUNCTION_FREE below: layout, remat, dtype, param_dtype, the
HF family, engine, jitter, the selection bias). Router biases an HF checkpoint does not have
start at zero; float32 master weights (`train.master_weights`) restart from the loaded
parameters, rounded to the run's `model.param_dtype`.
"""

from __future__ import annotations

import dataclasses
import pathlib

from moejax.models.decoder import DecoderSpec
from moejax.models.weights import load_params, load_weights
from moejax.options import flat_config
from moejax.train.optim import sync_master_weights

FUNCTION_FREE = ("scan_layers", "remat", "attention", "dtype", "param_dtype", "hf_family",
                 "moe.engine",
                 "moe.grouped_matmul", "moe.implementation", "moe.capacity_factor",
                 "moe.record_cosine", "moe.cosine_source", "moe.router.jitter",
                 "moe.router.use_bias")


def _check_same_function(source_spec: DecoderSpec, spec: DecoderSpec, source) -> None:
    there, here = (flat_config(dataclasses.asdict(s)) for s in (source_spec, spec))
    differ = [f"model.{k}={there.get(k)!r} there, {here.get(k)!r} here"
              for k in sorted(there.keys() | here.keys())
              if not k.startswith(FUNCTION_FREE) and there.get(k) != here.get(k)]
    if differ:
        raise ValueError(f"train.init_from={source} holds another model: {'; '.join(differ)}")


def init_from(model, source, optimizer=None) -> None:
    """Loads the weights of `source` into `model` (a Decoder, possibly sharded), in place:
    each array lands on the sharding the model's array has, in its dtype; `optimizer`'s
    master weights (if it keeps any) restart from them.

    Raises:
      FileNotFoundError: `source` is neither an export nor an HF directory.
      ValueError: its model differs from `model.spec` (each difference named).
    """
    source = pathlib.Path(source).expanduser().resolve()
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"train.init_from={source}: neither a moejax export (params/, "
                                "config.json) nor a Hugging Face directory (config.json)")
    source_spec, params = load_weights(source, scan_layers=model.spec.scan_layers)
    _check_same_function(source_spec, model.spec, source)
    load_params(model, params)
    if optimizer is not None:
        sync_master_weights(optimizer, model)
