"""Upcycling: a dense moejax model -> an MoE whose experts copy its FFNs (docs/methods.md,
"Upcycling").

Sparse Upcycling (Komatsuzaki et al., 2023) with fine-grained experts, the same function at
step 0, and Drop-Upcycling (Nakamura et al., 2025). With granularity m, each dense SwiGLU FFN of
width F is cut into m slices of F/m hidden units (slice j: units j F/m .. (j+1) F/m - 1, the
columns of w_gate and w_up and the rows of w_down); an FFN is a sum over its hidden units, so
FFN(x) = sum_j FFN_j(x). The DeepSeek block's S shared experts take slices 0..S-1 (one SwiGLU
of width S F/m); the other n = m - S slices fill the routed experts: routed expert e = c n + i
(copy c < C = E'/n, i < n; E' = num_experts m) is a copy of slice S + i.

The router is fresh and *copy-tied*: its column e is u_c, c = e // n, u_c ~ N(0, 1/D) (a fresh
router's scale). The n experts of a copy then have equal scores, top-k (K = top_k m, a multiple
of n; ties to the lowest index) takes whole copies, and with gates normalised over the picks
each picked expert's gate is G_c / n with sum_c G_c = 1; `router.scaling_factor = n` makes the
routed output sum_i FFN_{S+i}(x), so the block computes FFN(x) for every token (up to float
rounding; the capacity engine's drops excepted). A random rather than zero router breaks the
symmetry between copies from step 1: a zero router ties every copy, so every token picks the
same lowest-indexed copies, whose gradients are equal forever.

Drop-upcycling (drop_fraction p): each routed expert re-initialises round(p F/m) of its hidden
units, chosen at random per expert, from N(mean, std^2) of the dense matrix they come from
(the w_gate and w_up columns and the w_down rows of those units); the experts start diverse
and the function is no longer the dense one. Attention, norms, embeddings, head and the
shared experts are copied exactly.

`upcycle` works on a model or parameter dict; `upcycle_export` reads any source
`weights.load_weights` reads and writes a moejax export (`moejax/cli/upcycle.py`, which adds
the source's tokenizer files).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from moejax.models.decoder import DecoderSpec, decoder_spec_from_config
from moejax.models.layout import EXPORTED, abstract_params, stack_params, unstack_params
from moejax.moe.router import RouterSpec
from moejax.moe.spec import MoESpec
from moejax.options import check_choice, check_int, check_known, check_range

BLOCKS = ("topk", "deepseek")  # the blocks an upcycle can make
DECODER_OPTIONS = ("block", "first_dense_layers", "moe_every")  # besides MoESpec's fields
SET_HERE = {"d_hidden": "the dense model.d_ff", "granularity": "the granularity argument"}
UPCYCLED = "upcycled"  # `upcycled_dir`'s prefix


# --- the spec -------------------------------------------------------------------------------

def upcycled_spec(dense_spec: DecoderSpec, moe_spec_options: Mapping | None = None,
                  granularity: int = 1) -> DecoderSpec:
    """The MoE spec an upcycle of `dense_spec` gives, checked before any weight is read.

    moe_spec_options: MoESpec fields (a "router" mapping of RouterSpec fields inside) and
    "block" ("topk" or "deepseek"), "first_dense_layers" (0), "moe_every" (1); the dense
    spec's own `moe` section gives the rest. Set here: moe.d_hidden = d_ff (F), moe.granularity
    = m and moe.router.scaling_factor = n = m - S (S shared experts, DeepSeek block only).

    Raises:
      ValueError: one line naming the option and what is allowed: a source that is not
        dense, an unknown option, one set here, or options under which the upcycle cannot
        compute the dense function.
    """
    options = dict(moe_spec_options or {})
    check_int("granularity", granularity)
    if dense_spec.first_dense_layers != dense_spec.num_layers:
        raise ValueError(f"the source is not dense: model.first_dense_layers="
                         f"{dense_spec.first_dense_layers}; allowed: model.num_layers="
                         f"{dense_spec.num_layers} (every layer a dense FFN)")
    decoder = {k: options.pop(k) for k in DECODER_OPTIONS if k in options}
    router = dict(options.pop("router", None) or {})
    for name, what in SET_HERE.items():
        if name in options:
            raise ValueError(f"model.moe.{name} is set by upcycling ({what}); allowed: leave "
                             "it out")
    if "scaling_factor" in router:
        raise ValueError("model.moe.router.scaling_factor is set by upcycling (the routed "
                         "slices n); allowed: leave it out")
    check_known(MoESpec, options, "model.moe")
    check_known(RouterSpec, router, "model.moe.router")
    block = decoder.get("block", "topk")
    check_choice("model.block", block, BLOCKS)
    if dense_spec.d_ff % granularity:
        raise ValueError(f"granularity={granularity} does not divide the dense model.d_ff="
                         f"{dense_spec.d_ff}; allowed: a divisor of {dense_spec.d_ff}")
    moe = dataclasses.replace(dense_spec.moe, **options, d_hidden=dense_spec.d_ff,
                              granularity=granularity)
    spec = dataclasses.replace(dense_spec, block=block, moe=moe,
                               first_dense_layers=decoder.get("first_dense_layers", 0),
                               moe_every=decoder.get("moe_every", 1))
    n = max(granularity - shared_slices(spec), 1)  # < 1: named by _check_preserving
    router = dataclasses.replace(moe.router, **router, scaling_factor=float(n))
    spec = dataclasses.replace(spec, moe=dataclasses.replace(moe, router=router))
    _check_preserving(spec)
    return spec


def shared_slices(spec: DecoderSpec) -> int:
    """S, the slices of each FFN the shared experts take (0 for the top-k block)."""
    return spec.moe.num_shared_experts if spec.block == "deepseek" else 0


def _check_preserving(spec: DecoderSpec) -> None:
    """Raises ValueError unless the copy-tied upcycle of `spec` computes the dense function."""
    moe, m = spec.moe, spec.moe.granularity
    if spec.block == "deepseek":
        if not 1 <= moe.num_shared_experts < m:
            raise ValueError(f"model.moe.num_shared_experts={moe.num_shared_experts}; allowed: "
                             f"an integer in [1, granularity - 1 = {m - 1}] with block deepseek "
                             "(the shared experts take that many of each FFN's m slices)")
        check_choice("model.moe.shared_mix", moe.shared_mix, ("sum",))
        if moe.shared_d_hidden not in (None, moe.routed_d_hidden):
            raise ValueError(f"model.moe.shared_d_hidden={moe.shared_d_hidden}; allowed: None "
                             f"or d_ff / granularity = {moe.routed_d_hidden}")
    n = m - shared_slices(spec)
    for name, count in (("num_experts", moe.routed_experts), ("top_k", moe.routed_top_k)):
        if count % n:
            raise ValueError(f"model.moe.{name}={getattr(moe, name)}: {name} * granularity = "
                             f"{count} is not a multiple of the {n} routed slices; allowed: "
                             "a value that makes it one (whole copies of the FFN)")
    if moe.router.kind != "topk_softmax" and not moe.router.normalize_gates:
        raise ValueError("model.moe.router.normalize_gates=False; allowed: True (a token's "
                         "gates must sum to 1), or router.kind='topk_softmax'")
    if (moe.routed_experts // moe.router.num_groups) % n:
        raise ValueError(f"model.moe.router.num_groups={moe.router.num_groups}; allowed: a "
                         f"number of groups each holding whole copies ({n} experts each)")


def _check_arguments(drop_fraction: float, seed: int) -> None:
    check_range("drop_fraction", drop_fraction, 0.0, 1.0)
    check_int("seed", seed, 0)


# --- the weights ----------------------------------------------------------------------------

def ffn_slices(ffn: dict, granularity: int) -> dict:
    """A dense SwiGLU {w_gate [D, F], w_up [D, F], w_down [F, D]} -> its m slices stacked:
    w_gate, w_up [m, D, F/m], w_down [m, F/m, D]; slice j holds units j F/m .. (j+1) F/m - 1."""
    d_model, width = ffn["w_gate"].shape
    shape = (granularity, width // granularity)
    columns = {name: jnp.moveaxis(ffn[name].reshape(d_model, *shape), 1, 0)
               for name in ("w_gate", "w_up")}
    return {**columns, "w_down": ffn["w_down"].reshape(*shape, d_model)}


def copy_tied_router(key: jax.Array, d_model: int, copies: int, n: int) -> jax.Array:
    """[D, copies * n] float32 router: column c n + i is u_c ~ N(0, 1/D) for every i < n."""
    u = jax.random.normal(key, (d_model, copies), jnp.float32) * d_model**-0.5
    return jnp.repeat(u, n, axis=1)


def dropped_units(key: jax.Array, num_experts: int, width: int, count: int) -> jax.Array:
    """[E, width] bool: `count` units per expert, drawn without replacement, each expert
    its own."""
    def one(k):
        return jnp.zeros((width,), bool).at[jax.random.permutation(k, width)[:count]].set(True)

    return jax.vmap(one)(jax.random.split(key, num_experts))


def drop_units(key: jax.Array, experts: dict, dense_ffn: dict, fraction: float) -> dict:
    """Drop-upcycling: re-initialises round(fraction F/m) hidden units of each expert.

    experts: w_gate, w_up [E, D, F/m], w_down [E, F/m, D]; dense_ffn: the dense SwiGLU they
    copy, whose matrices' mean and std the new values are drawn with (Nakamura et al.).
    Returns the experts with those units' w_gate/w_up columns and w_down rows redrawn.
    """
    num, _, width = experts["w_gate"].shape
    mask_key, *keys = jax.random.split(key, 4)
    mask = dropped_units(mask_key, num, width, int(fraction * width + 0.5))
    out = {}
    for k, name in zip(keys, ("w_gate", "w_up", "w_down"), strict=True):
        w, dense = experts[name], dense_ffn[name].astype(jnp.float32)
        fresh = jax.random.normal(k, w.shape, jnp.float32) * dense.std() + dense.mean()
        where = mask[:, :, None] if name == "w_down" else mask[:, None, :]
        out[name] = jnp.where(where, fresh.astype(w.dtype), w)
    return out


def upcycled_block(dense_ffn: dict, spec: DecoderSpec, key: jax.Array,
                   drop_fraction: float) -> dict:
    """One dense SwiGLU's parameters -> the MoE block's (`spec.block`): routed experts
    [E', D, F/m] / [E', F/m, D] copying the n routed slices C times, a copy-tied router, and
    for the DeepSeek block the shared SwiGLU of the first S F/m units."""
    moe, m, s = spec.moe, spec.moe.granularity, shared_slices(spec)
    n = m - s
    copies = moe.routed_experts // n
    router_key, drop_key = jax.random.split(key)
    experts = {name: jnp.tile(w[s:], (copies, 1, 1))
               for name, w in ffn_slices(dense_ffn, m).items()}
    if drop_fraction > 0:
        experts = drop_units(drop_key, experts, dense_ffn, drop_fraction)
    router = {"kernel": copy_tied_router(router_key, spec.d_model, copies, n)}
    if moe.router.use_bias:
        router["bias"] = jnp.zeros((moe.routed_experts,), jnp.float32)
    routed = {"router": router, "experts": experts}
    if spec.block == "topk":
        return routed
    width = s * moe.routed_d_hidden
    shared = {"w_gate": dense_ffn["w_gate"][:, :width], "w_up": dense_ffn["w_up"][:, :width],
              "w_down": dense_ffn["w_down"][:width]}
    return {"routed": routed, "shared": {"ffn": shared}}


def upcycle(dense_model_or_params, dense_spec: DecoderSpec | None = None,
            moe_spec_options: Mapping | None = None, *, granularity: int = 1,
            drop_fraction: float = 0.0, seed: int = 0) -> tuple[DecoderSpec, dict]:
    """A dense Decoder (or its parameter dict, either layout) -> (MoE spec, its parameters).

    Args:
      dense_model_or_params: a `Decoder` whose every layer is dense, or its variables as a
        pure dict (then `dense_spec` is required).
      dense_spec: its DecoderSpec (None: the model's).
      moe_spec_options: see `upcycled_spec`.
      granularity: m, slices per FFN (fine-grained experts of width F/m).
      drop_fraction: p in [0, 1], the share of each routed expert's units re-initialised
        (0: the dense function exactly).
      seed: the routers' and the dropped units' randomness.

    Returns:
      (spec, params): params a pure dict in the layout of `spec.scan_layers` (the dense
      model's) and in its dtypes.

    Raises:
      ValueError: as `upcycled_spec`; drop_fraction or seed out of range; no dense_spec.
    """
    if isinstance(dense_model_or_params, nnx.Module):
        dense_spec = dense_spec or dense_model_or_params.spec
        params = nnx.to_pure_dict(nnx.state(dense_model_or_params, EXPORTED))
    else:
        params = dense_model_or_params
    if dense_spec is None:
        raise ValueError("dense_spec=None; allowed: a DecoderSpec (required with a parameter "
                         "dict)")
    spec = upcycled_spec(dense_spec, moe_spec_options, granularity)
    _check_arguments(drop_fraction, seed)
    params = unstack_params(dense_spec, params)
    key = jax.random.key(seed)
    layers = {}
    for i, layer in params["layers"].items():
        if spec.is_moe_layer(i):
            ffn = layer["ffn"]
            block = upcycled_block(ffn["ffn"], spec, jax.random.fold_in(key, i), drop_fraction)
            layer = {**layer, "ffn": {"norm": ffn["norm"], "block": block}}
        layers[i] = layer
    out = stack_params(spec, {**params, "layers": layers})
    return spec, jax.tree.map(lambda a, t: jnp.asarray(a, t.dtype), out, abstract_params(spec))


# --- on disk ----------------------------------------------------------------------------

def source_spec(source) -> tuple[dict, DecoderSpec]:
    """(moejax config dict or {} for a Hugging Face directory, DecoderSpec) of any source
    `weights.load_weights` reads, from its config alone."""
    from moejax.models import hf_config, hf_dir, weights

    config = weights.run_config(source)
    if config is not None:
        return config, decoder_spec_from_config(config["model"])
    return {}, hf_config.spec_from_hf_config(hf_dir.read_config(source))


def plain(options: Mapping | None) -> dict:
    """A nested mapping (MappingProxyType allowed) as nested dicts (JSON)."""
    return {k: plain(v) if isinstance(v, Mapping) else v for k, v in (options or {}).items()}


def upcycle_export(source, out, moe_spec_options: Mapping | None = None, *,
                   granularity: int = 1, drop_fraction: float = 0.0, seed: int = 0,
                   files: Iterable[pathlib.Path] = (), overwrite: bool = False) -> pathlib.Path:
    """Upcycles the dense model of `source` (an export, a training workdir or an HF
    directory) and writes a moejax export to `out` (`weights.write_export`): its params,
    config.json (the source's config with the MoE spec as "model" and an "upcycle" record)
    and a copy of each of `files` (e.g. the source's tokenizer files, `moejax-upcycle`).
    Every option is checked before the weights are read.

    Returns:
      The absolute `out`.

    Raises:
      ValueError: as `upcycle`; FileNotFoundError / RuntimeError: as `weights.load_weights`;
      FileExistsError, DirectoryBusyError, WriteError: as `weights.write_export`.
    """
    from moejax.models import weights
    from moejax.models.hf_config import KEPT

    config, dense_spec = source_spec(source)
    upcycled_spec(dense_spec, moe_spec_options, granularity)
    _check_arguments(drop_fraction, seed)
    loaded_spec, params = weights.load_weights(source)
    spec, params = upcycle(params, loaded_spec, moe_spec_options, granularity=granularity,
                           drop_fraction=drop_fraction, seed=seed)
    record = {"source": str(pathlib.Path(source).expanduser().resolve()),
              "moe_spec_options": plain(moe_spec_options), "granularity": granularity,
              "drop_fraction": drop_fraction, "seed": seed}
    config = {**config, "model": dataclasses.asdict(spec), "upcycle": record}
    if KEPT not in config and (kept := weights.hf_record(source)) is not None:
        config[KEPT] = kept
    out = pathlib.Path(out).expanduser().resolve()
    weights.write_export(out, config, params, overwrite=overwrite, files=files)
    return out


def upcycled_dir(export_dir, options: Mapping) -> pathlib.Path:
    """Where an experiment keeps the upcycle of `export_dir` with `options` (the keyword
    arguments of `upcycle_export`): a sibling named by a hash of the options, so different
    upcycles of one pretraining run (and the runs that start from them) never share one."""
    digest = hashlib.sha256(json.dumps(plain(options), sort_keys=True).encode()).hexdigest()
    return pathlib.Path(export_dir).parent / f"{UPCYCLED}-{digest[:10]}"
