"""Decoder LM: embedding, layers of (attention, FFN or MoE), final norm, untied head.

Layer i is an MoE layer when `i >= first_dense_layers` and
`(i - first_dense_layers) % moe_every == 0`; other layers use a dense SwiGLU FFN. The
decoder returns the logits and the routing records of all MoE layers concatenated along the
router axis in depth order (a block with two routers contributes two, in its own order).

Two parameter layouts compute the same function (`model.scan_layers`):
- unrolled: `layers[i]`, one `DecoderLayer` per layer, run by a Python loop (compile time
  grows with depth);
- scanned (default): `stacks[s].layers[j]`, parameters stacked over depth and run by
  `nnx.scan` (one traced unit per stack, so compile time barely grows). `layer_stacks(spec)`
  cuts the depth into at most three stacks of a repeating unit: the leading dense layers,
  the periodic MoE unit (`moe_every` layers: one MoE, then dense), and the leftover layers.
  `moejax.models.weights` moves a parameter dict between the two layouts.
"""

from __future__ import annotations

from types import MappingProxyType

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.layers.attention import Attention, positions_from_segments
from moejax.layers.embed import Embed, LMHead
from moejax.layers.ffn import SwiGLU
from moejax.layers.mla import MLAttention
from moejax.layers.norms import RMSNorm
from moejax.models.decoder_spec import (  # noqa: F401 - re-exported: the decoder's options
    BLOCK_KINDS,
    DTYPES,
    QK_NORM_AXES,
    REMAT_POLICIES,
    DecoderSpec,
    decoder_spec_from_config,
    layer_stacks,
)
from moejax.moe.cartesian import CartesianMoE
from moejax.moe.deepseek import DeepSeekMoE
from moejax.moe.topk import TopKMoE
from moejax.record import concat_records

BLOCKS = MappingProxyType({"topk": TopKMoE, "deepseek": DeepSeekMoE, "cartesian": CartesianMoE})
assert tuple(BLOCKS) == BLOCK_KINDS

# model.remat: what the backward pass may keep of each layer's forward (the rest is recomputed)
class DenseFeedForward(nnx.Module):
    """h -> h + SwiGLU(RMSNorm(h)); no routers."""

    def __init__(self, spec: DecoderSpec, *, rngs: nnx.Rngs, engine=None):
        self.norm = RMSNorm(spec.d_model, eps=spec.norm_eps)
        self.ffn = SwiGLU(spec.d_model, spec.d_ff, rngs=rngs)

    def __call__(self, h: jax.Array, *, disable_top1: bool = False):
        return h + self.ffn(self.norm(h)), None


class MoEFeedForward(nnx.Module):
    """h -> h + Block(RMSNorm(h)), with the block's routing record."""

    def __init__(self, spec: DecoderSpec, *, rngs: nnx.Rngs, engine=None):
        self.norm = RMSNorm(spec.d_model, eps=spec.norm_eps)
        self.block = BLOCKS[spec.block](spec.d_model, spec.moe, rngs=rngs, engine=engine)

    def __call__(self, h: jax.Array, *, disable_top1: bool = False):
        """h: [T, D] -> ([T, D], record)."""
        y, record = self.block(self.norm(h), disable_top1=disable_top1)
        return h + y, record


class CartesianFeedForward(nnx.Module):
    """h -> CartesianMoE(h): the layer brings its own norms and residuals."""

    def __init__(self, spec: DecoderSpec, *, rngs: nnx.Rngs, engine=None):
        self.block = CartesianMoE(spec.d_model, spec.moe, norm_eps=spec.norm_eps, rngs=rngs,
                                  engine=engine)

    def __call__(self, h: jax.Array, *, disable_top1: bool = False):
        return self.block(h, disable_top1=disable_top1)


def _feed_forward_cls(spec: DecoderSpec, layer: int):
    if not spec.is_moe_layer(layer):
        return DenseFeedForward
    return CartesianFeedForward if spec.block == "cartesian" else MoEFeedForward


def _attention(spec: DecoderSpec, rngs: nnx.Rngs):
    """The layer's attention: MLA when `spec.mla` is set, else grouped-query attention."""
    if spec.mla is not None:
        return MLAttention(spec.d_model, spec.num_heads, spec.mla, rope_theta=spec.rope_theta,
                           rope_scaling=spec.rope_scaling, norm_eps=spec.norm_eps, rngs=rngs,
                           implementation=spec.attention)
    return Attention(spec.d_model, spec.num_heads, spec.num_kv_heads, spec.resolved_head_dim,
                     rope_theta=spec.rope_theta, rope_scaling=spec.rope_scaling, rngs=rngs,
                     implementation=spec.attention, qk_norm=spec.qk_norm,
                     qk_norm_axes=spec.qk_norm_axes, qkv_bias=spec.qkv_bias,
                     clip_qkv=spec.clip_qkv, norm_eps=spec.norm_eps)


class DecoderLayer(nnx.Module):
    def __init__(self, spec: DecoderSpec, layer: int, *, rngs: nnx.Rngs, engine=None):
        self.attn_norm = RMSNorm(spec.d_model, eps=spec.norm_eps)
        self.attn = _attention(spec, rngs)
        self.ffn = _feed_forward_cls(spec, layer)(spec, rngs=rngs, engine=engine)

    def __call__(self, x: jax.Array, positions: jax.Array, segments=None, *,
                 disable_top1: bool = False, cache=None):
        """x: [B, S, D], positions and segments [B, S], cache: this layer's KVCache or None
        -> ([B, S, D], record or None, the updated KVCache or None)."""
        attended = self.attn(self.attn_norm(x), positions, segments, cache)
        if cache is not None:
            attended, cache = attended
        x = x + attended
        batch, seq, d_model = x.shape
        h, record = self.ffn(x.reshape(batch * seq, d_model), disable_top1=disable_top1)
        return h.reshape(batch, seq, d_model), record, cache


class LayerStack(nnx.Module):
    """`repeats` copies of a unit of `unit` consecutive layers, parameters stacked on axis 0."""

    def __init__(self, spec: DecoderSpec, first: int, unit: int, repeats: int, *,
                 rngs: nnx.Rngs, engine=None):
        @nnx.split_rngs(splits=repeats)
        @nnx.vmap(in_axes=0, out_axes=0)
        def make_unit(rngs):
            return nnx.List([DecoderLayer(spec, first + j, rngs=rngs, engine=engine)
                             for j in range(unit)])

        self.layers = make_unit(rngs)

    def __call__(self, x, run_layer, cache=None):
        """x: [B, S, D], cache: None or a tuple of one KVCache per layer of the unit, stacked
        over the repeats (k, v [repeats, B, M, K, H]) -> ([B, S, D], record over the stack's
        routers in depth order or None, the updated cache or None).

        run_layer(layer, x, layer_cache) -> (x, record or None, layer_cache) runs one layer.
        """

        def run_unit(x, layers, unit_cache):
            records, new_cache = [], []
            for j, layer in enumerate(layers):
                x, record, layer_cache = run_layer(
                    layer, x, None if unit_cache is None else unit_cache[j])
                new_cache.append(layer_cache)
                if record is not None:
                    records.append(record)
            records = concat_records(records) if records else None
            return x, records, (None if unit_cache is None else tuple(new_cache))

        x, records, cache = nnx.scan(run_unit, in_axes=(nnx.Carry, 0, 0),
                                     out_axes=(nnx.Carry, 0, 0))(x, self.layers, cache)
        if records is not None:  # [repeats, R_unit, ...] -> [repeats * R_unit, ...]
            records = jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), records)
        return x, records, cache


def cast_params(module: nnx.Module, dtype) -> None:
    """Casts every float `nnx.Param` of `module` to `dtype` in place (`model.param_dtype`;
    the router's selection bias, not a Param, stays float32)."""
    if dtype == jnp.float32:
        return
    for _, param in nnx.iter_graph(module):
        if isinstance(param, nnx.Param) and jnp.issubdtype(param[...].dtype, jnp.floating):
            param.set_value(param[...].astype(dtype))


class Decoder(nnx.Module):
    """tokens [B, S] -> (logits [B, S, V] float32, RoutingRecord over T = B*S tokens or None).

    `engine` replaces the MoE layers' `moe.engine` (e.g. a `moejax.parallel.ExpertParallel`).
    """

    def __init__(self, spec: DecoderSpec, *, rngs: nnx.Rngs, engine=None):
        self.spec = spec
        self.embed = Embed(spec.vocab_size, spec.d_model, rngs=rngs)
        if spec.scan_layers:
            self.stacks = nnx.List([LayerStack(spec, *stack, rngs=rngs, engine=engine)
                                    for stack in layer_stacks(spec)])
        else:
            self.layers = nnx.List([DecoderLayer(spec, i, rngs=rngs, engine=engine)
                                    for i in range(spec.num_layers)])
        self.final_norm = RMSNorm(spec.d_model, eps=spec.norm_eps)
        self.head = LMHead(spec.d_model, spec.vocab_size, rngs=rngs)
        cast_params(self, DTYPES[spec.param_dtype])

    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None, *,
                 segments: jax.Array | None = None, disable_top1: bool = False, cache=None):
        """tokens: [B, S] int.

        Args:
          positions: [B, S] int RoPE positions; None: counted from each segment's start.
          segments: [B, S] int packed-document ids (the pipeline's "segments"): attention
            stays within a document. None: each row is one document.
          disable_top1: the robustness test (every router drops each token's first choice and
            re-picks top-k from the rest).
          cache: None (training, scoring), or every layer's KV cache to decode with
            (`moejax.models.generate.init_cache`; segments must be None): unrolled, a tuple of
            one KVCache per layer (k, v [B, M, K, H]); scanned, per stack a tuple of one
            KVCache per layer of its unit, stacked over the repeats (k, v [L, B, M, K, H]).

        Returns:
          (logits, record), and the cache with this call's keys and values appended as a
          third item when a cache is given.
        """
        if positions is None:
            positions = (jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
                         if segments is None else positions_from_segments(segments))
        x = self.embed(tokens, DTYPES[self.spec.dtype])

        def run_layer(layer, x, layer_cache):
            return layer(x, positions, segments, disable_top1=disable_top1, cache=layer_cache)

        if self.spec.remat != "none":
            run_layer = nnx.remat(run_layer, policy=REMAT_POLICIES[self.spec.remat])
        groups = self.stacks if self.spec.scan_layers else self.layers
        if cache is not None and len(cache) != len(groups):
            raise ValueError(f"cache has {len(cache)} entries; allowed: {len(groups)}, one per "
                             f"{'stack' if self.spec.scan_layers else 'layer'} (init_cache)")
        records, new_cache = [], []
        for i, group in enumerate(groups):
            group_cache = None if cache is None else cache[i]
            if self.spec.scan_layers:
                x, record, group_cache = group(x, run_layer, group_cache)
            else:
                x, record, group_cache = run_layer(group, x, group_cache)
            new_cache.append(group_cache)
            if record is not None:
                records.append(record)
        logits = self.head(self.final_norm(x))
        record = concat_records(records) if records else None
        return (logits, record) if cache is None else (logits, record, tuple(new_cache))

    def _router_groups(self) -> list[tuple[list, bool]]:
        """(routers, stacked) in depth order; a stacked router holds one router per repeat."""
        if not self.spec.scan_layers:
            return [([r for layer in self.layers if not isinstance(layer.ffn, DenseFeedForward)
                      for r in layer.ffn.block.routers()], False)]
        return [([r for layer in stack.layers if not isinstance(layer.ffn, DenseFeedForward)
                  for r in layer.ffn.block.routers()], True) for stack in self.stacks]

    def router_biases(self) -> jax.Array:
        """[R, E] every router's load-balancing bias in depth order (padded with 0 to the
        widest router)."""
        width = max(r.bias.shape[-1] for routers, _ in self._router_groups() for r in routers)
        rows = []
        for routers, stacked in self._router_groups():
            if routers:
                pad = [jnp.pad(r.bias[...], [(0, 0)] * (r.bias.ndim - 1)
                               + [(0, width - r.bias.shape[-1])]) for r in routers]
                rows.append(jnp.stack(pad, axis=1 if stacked else 0).reshape(-1, width))
        return jnp.concatenate(rows)

    def set_router_biases(self, biases: jax.Array) -> None:
        """biases: [R, E] in the order of `router_biases` (padding ignored)."""
        start = 0
        for routers, stacked in self._router_groups():
            if not routers:
                continue
            repeats = routers[0].bias.shape[0] if stacked else 1
            block = biases[start:start + repeats * len(routers)]
            block = block.reshape(repeats, len(routers), -1) if stacked else block[None]
            for u, router in enumerate(routers):
                value = block[:, u, : router.bias.shape[-1]]
                router.bias[...] = value if stacked else value[0]
            start += repeats * len(routers)
