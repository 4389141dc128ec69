"""From a config file's ConfigDict to the typed specs, with the cross-section checks."""

from __future__ import annotations

import dataclasses

from moejax.layers.decoder import DecoderSpec, decoder_spec_from_config
from moejax.layers.options import spec_from_mapping
from moejax.regularizers import LossSpec


def loss_spec_from_config(loss_config) -> LossSpec:
    """`config.loss` -> LossSpec; an unknown key raises ValueError naming it."""
    return spec_from_mapping(LossSpec, loss_config, "loss")


def num_routers(spec: DecoderSpec) -> int:
    """Routers in depth order: one per MoE layer, two per CartesianMoE layer."""
    per_layer = 2 if spec.block == "cartesian" else 1
    return per_layer * sum(spec.is_moe_layer(i) for i in range(spec.num_layers))


def specs_from_config(config) -> tuple[DecoderSpec, LossSpec]:
    """Builds (DecoderSpec, LossSpec) and checks that the losses fit the model.

    The blocks are told to record the per-token cosine that the chosen losses read.
    """
    model = decoder_spec_from_config(config.model)
    loss = loss_spec_from_config(config.get("loss"))
    k = model.moe.routed_top_k
    if (loss.sp > 0 or loss.orth > 0) and k < 2:
        raise ValueError(f"loss.sp={loss.sp} / loss.orth={loss.orth} compare pairs of "
                         f"co-activated experts and need top_k >= 2, but the model picks k={k}")
    if loss.cp > 0 and num_routers(model) < 2:
        raise ValueError(f"loss.cp={loss.cp} couples adjacent routers and needs >= 2 routers, "
                         f"but the model has {num_routers(model)}")
    if loss.bias_rate > 0 and not model.moe.router.use_bias:
        raise ValueError(f"loss.bias_rate={loss.bias_rate} needs model.moe.router.use_bias=True")
    source = loss.needs_cosine
    # the losses' needs, or an explicit model.moe.record_cosine (to measure specialization)
    moe = dataclasses.replace(model.moe, record_cosine=source is not None or
                              model.moe.record_cosine,
                              cosine_source=source or model.moe.cosine_source)
    return dataclasses.replace(model, moe=moe), loss
