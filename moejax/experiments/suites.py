"""Experiment suites: matched variants that differ only in the property under test.

A variant is a base config file plus a few overrides (dotted keys); a suite is a tuple of
variants and the claims its report answers. Every variant of a suite shares the model size, the
token budget and, for a given seed, the data order and the initial weights of every module the
variants share. The scale is one more set of overrides applied to every variant alike (a
variant's own overrides win over it):
`DEFAULT_SCALE` (the committed results, on the 2-core CPU) or `QUICK_SCALE` (toy size, tests).

All variants record the per-token cosine of co-activated experts, so the specialization
metric exists for the variants without the specialization loss too (the cosine's cost is then
paid by every variant, and the step-time column compares the losses only).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping
from types import MappingProxyType

from moejax.experiments import stats
from moejax.options import flat_config
from moejax.train.config_files import SHIPPED, load_config


@dataclasses.dataclass(frozen=True)
class Variant:
    """One arm of a suite: `configs/<config>.py[:arg]` plus dotted-key overrides.

    init_from: a variant whose seed-0 run, trained first and exported, gives this one's
      initial weights (`train.init_from`; fine-tuning); None: random init.
    steps_factor: train.steps of the scale times this (a pretraining run longer than the
      fine-tuning that starts from it).
    upcycle: with init_from, the keyword arguments of `moejax.models.upcycle.upcycle_export`:
      the runner upcycles init_from's export with them (into `upcycle.upcycled_dir`) and
      this variant starts from the upcycle; None: from the export itself.
    scale: dotted-key overrides of DEFAULT_SCALE for this variant (a longer run), applied
      before its own overrides; the quick scale ignores them (a toy run stays a toy run).
    """

    name: str
    config: str
    overrides: MappingProxyType
    init_from: Variant | None = None
    steps_factor: int = 1
    upcycle: Mapping | None = None
    scale: Mapping = dataclasses.field(default_factory=lambda: MappingProxyType({}))


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim of a paper: variant `better` beats `than` on `metric` (lower or higher).

    primary: one of the papers' own claims at their settings, declared before the runs: the
      summary's Holm family (the others, ablations, the 10x dose and mechanism checks, form a
      second family).
    paper_effect: the paper's effect on `metric` in nats per token (a loss claim), for the
      equivalence test "no effect of the claimed size" (`stats.loss_margin`); None: no target.
    """

    text: str
    metric: str
    better: str
    than: str
    lower_is_better: bool = True
    primary: bool = False
    paper_effect: float | None = None

    @property
    def key(self) -> tuple:
        """What the claim compares, whatever its suite and wording: the same key in two suites
        (or scales) is the same claim."""
        return self.metric, self.better, self.than, self.lower_is_better


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How every variant of a command's suites is resolved (`variant_config`).

    quick: QUICK_SCALE (toy size, a smoke test) instead of DEFAULT_SCALE.
    config_dir: the configs/ directory (None: `default_config_dir()`).
    overrides: {dotted key: value} applied to every variant after the scale and its own
      overrides (`moejax-experiment --set`).
    """

    quick: bool = False
    config_dir: str | pathlib.Path | None = None
    overrides: Mapping = dataclasses.field(default_factory=dict)

    def __post_init__(self):  # a read-only copy: the options cannot change under a command
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))


def _variant(name, config, init_from=None, steps_factor=1, upcycle=None, scale=None,
             **overrides):
    return Variant(name, config, MappingProxyType(
        {key.replace("__", "."): value for key, value in overrides.items()}), init_from,
        steps_factor, None if upcycle is None else MappingProxyType(upcycle),
        MappingProxyType(dict(scale or {})))


# Paper A's weights (docs/methods.md section 5), and the same pair DOSE times stronger: a check that
# the losses move what they target at this scale, where the paper's weights add ~1e-5 nats.
DOSE = 10
_LOSSES = {"lb": dict(loss__sp=0.0, loss__cp=0.0),
           "lb+sp": dict(loss__sp=2e-3, loss__cp=0.0),
           "lb+cp": dict(loss__sp=0.0, loss__cp=1e-3),
           "lb+sp+cp": dict(loss__sp=2e-3, loss__cp=1e-3),
           f"lb+{DOSE}x(sp+cp)": dict(loss__sp=DOSE * 2e-3, loss__cp=DOSE * 1e-3)}
_PAPER_ARMS = ("lb+sp", "lb+cp", "lb+sp+cp")
_DEEPSEEK = dict(model__block="deepseek", model__moe__granularity=2,
                 model__moe__num_shared_experts=1)  # 16 experts of width F/2, top-4, 1 shared
_COSINE = dict(model__moe__record_cosine=True)
_COMMON = dict(_COSINE, train__eval_top1_disabled=False)  # the top-1 test: cartesian suite only

SPECIALIZATION = tuple(
    _variant(f"{family}/{losses}", "default", **_COMMON, **weights, **extra)
    for family, extra in (("topk", {}), ("deepseek", _DEEPSEEK))
    for losses, weights in _LOSSES.items())

CARTESIAN = tuple(
    _variant(name, f"{name}_base:small", loss__sp=0.0, loss__cp=0.0,
             train__eval_top1_disabled=True, **_COSINE)
    for name in ("cartesian", "finegrained", "topk_share"))

BASELINES = (
    _variant("lb", "default", **_COMMON, **_LOSSES["lb"]),
    _variant("lb+orth+var", "default", **_COMMON, **_LOSSES["lb"], loss__orth=2e-3,
             loss__var=1e-3),
    _variant("lb+sp+cp", "default", **_COMMON, **_LOSSES["lb+sp+cp"]),
)

# Paper A's inference claim: the top-k arms of SPECIALIZATION (the same configs, so the same
# runs), each then measured offloaded (`moejax/experiments/inference.py`).
INFERENCE = tuple(_variant(f"topk/{losses}", "default", **_COMMON, **_LOSSES[losses])
                  for losses in ("lb", "lb+sp+cp", f"lb+{DOSE}x(sp+cp)"))

# Paper A's fine-tuning claim: one top-k model pretrained with lb alone on every domain but the
# internet packages (3x the scale's steps, seed 0), then fine-tuned on those packages alone with
# lb, lb+sp+cp or lb+10x(sp+cp) (every seed); validation loss per fine-tuning domain. The
# stdlib split sends one file in 20 to validation, which leaves a few hundred bytes of `xml`;
# the fine-tuning runs send one in 5 (5-100 kB per domain; pretraining never read these
# domains, in either split) and evaluate on 64 batches (at the default scale, 1,024 of the
# split's 2,742 windows).
FINETUNE_DOMAINS = ("email", "html", "http", "urllib", "xml")
PRETRAIN_STEPS_FACTOR = 3
PRETRAINED = _variant("pretrain/lb", "default", steps_factor=PRETRAIN_STEPS_FACTOR, **_COMMON,
                      **_LOSSES["lb"], data__exclude_domains=FINETUNE_DOMAINS)
FINETUNE = tuple(_variant(f"finetune/{losses}", "default", init_from=PRETRAINED, **_COMMON,
                          **_LOSSES[losses], data__domains=FINETUNE_DOMAINS,
                          data__validation_every=5, train__eval_batches=64)
                 for losses in ("lb", "lb+sp+cp", f"lb+{DOSE}x(sp+cp)"))

# Upcycling, where specialization can bite (issue 35): one dense model (4 layers, every FFN a
# dense SwiGLU of width 256, the experts' width; 3x the scale's steps, seed 0) upcycled into the
# default top-2 MoE of 8 experts (`moejax.models.upcycle`: every expert a copy of its layer's
# FFN, a fresh copy-tied router, the dense function exactly at step 0), then trained on with
# lb, lb+sp+cp or lb+10x(sp+cp) (every seed); Drop-Upcycling (half of each expert's units
# re-initialised, Nakamura et al. 2025) with lb is the baseline. The runner upcycles the dense
# run's export with each variant's `upcycle` options before the variant starts from it.
_UPCYCLED_MODEL = dict(model__num_layers=4, model__d_ff=256, model__moe__d_hidden=256)
DENSE = _variant("pretrain/dense", "default", steps_factor=PRETRAIN_STEPS_FACTOR, **_COMMON,
                 **_LOSSES["lb"], **_UPCYCLED_MODEL, model__first_dense_layers=4)
UPCYCLE_OPTIONS = MappingProxyType({
    name: MappingProxyType(dict(moe_spec_options=MappingProxyType(dict(num_experts=8, top_k=2)),
                                granularity=1, drop_fraction=drop, seed=0))
    for name, drop in (("upcycle", 0.0), ("drop-upcycle", 0.5))})
UPCYCLE = (*(_variant(f"upcycle/{losses}", "default", init_from=DENSE,
                      upcycle=UPCYCLE_OPTIONS["upcycle"], **_COMMON, **_LOSSES[losses],
                      **_UPCYCLED_MODEL)
             for losses in ("lb", "lb+sp+cp", f"lb+{DOSE}x(sp+cp)")),
           _variant("drop-upcycle/lb", "default", init_from=DENSE,
                    upcycle=UPCYCLE_OPTIONS["drop-upcycle"], **_COMMON, **_LOSSES["lb"],
                    **_UPCYCLED_MODEL))

# The decisive CPU run (issue 35, declared on 2026-12-06 before it ran): paper A's loss claim on
# the top-k model, lb vs lb+sp+cp at the paper's weights, 1,000 steps (2M bytes), 8 seeds, every
# seed and arm on the same 256 evaluation windows; judged by equivalence at the per-byte target
# (`stats.loss_margin`, 0.00477 nats per byte). Power of that test at a true effect of 0,
# simulated: with the paired sd of the 4-seed 1,000-step runs of docs/results/long (0.0048 nats
# per byte, each seed on its own evaluation sample) 8 seeds give 63%; at sd 0.0035, 93%.
DECISIVE_SCALE = {"train.steps": 1000, "train.eval_every": 250, "train.log_every": 50,
                  "train.checkpoint_every": 1000}
DECISIVE = tuple(_variant(f"topk/{losses}", "default", scale=DECISIVE_SCALE, **_COMMON,
                          **_LOSSES[losses]) for losses in ("lb", "lb+sp+cp"))

SUITES = MappingProxyType({"specialization": SPECIALIZATION, "cartesian": CARTESIAN,
                           "baselines": BASELINES, "inference": INFERENCE,
                           "finetune": FINETUNE, "upcycle": UPCYCLE, "decisive": DECISIVE})
# Suites whose runs are measured after training (`inference.measure_run`).
OFFLOAD_SUITES = frozenset({"inference", "decisive"})


def _claims_specialization():
    claims = []
    for family in ("topk", "deepseek"):
        for treated in _PAPER_ARMS:
            headline = treated == "lb+sp+cp"
            claims.append(Claim(f"{family}: {treated} lowers validation loss vs lb",
                                stats.VAL_LOSS, f"{family}/{treated}", f"{family}/lb",
                                primary=headline,
                                paper_effect=stats.PAPER_A_LOSS_EFFECT if headline else None))
        alone = f"{family}/lb"
        for both in ("lb+sp+cp", f"lb+{DOSE}x(sp+cp)"):
            claims += [
                Claim(f"{family}: {both} raises specialization (lower mean squared cosine of "
                      "co-activated z)", stats.SPECIALIZATION, f"{family}/{both}", alone,
                      primary=both == "lb+sp+cp"),
                Claim(f"{family}: {both} lowers routing entropy", stats.ROUTING_ENTROPY,
                      f"{family}/{both}", alone)]
        claims += [
            Claim(f"{family}: lb+{DOSE}x(sp+cp) lowers validation loss vs lb", stats.VAL_LOSS,
                  f"{family}/lb+{DOSE}x(sp+cp)", alone, paper_effect=stats.PAPER_A_LOSS_EFFECT),
            Claim(f"{family}: lb+sp+cp costs < 2% extra step time", stats.STEP_MS_OVERHEAD,
                  f"{family}/lb+sp+cp", alone, primary=True)]
    return tuple(claims)


# The offloaded and expert-parallel numbers are judged on real - load-matched null (`inference`
# DIFF: the same measurement on i.i.d. traces with the run's own per-router expert loads), so a
# gain from skewed loads alone does not count; E = 8, k = 2: M = 2 is M/E = 1/4, and prefetch is
# measured at M = 4, where it can win (at M = k every prefetch evicts an expert in use).
def _inference_claims(treated: str) -> tuple[Claim, ...]:
    """Paper A's inference claim and its training-side claims, `treated` vs "topk/lb"."""
    paper = treated == "topk/lb+sp+cp"
    return (
        Claim(f"{treated} raises the offloaded experts' hit rate (LRU, M = 2 of 8) beyond the "
              "load-matched null", "hit_rate lru@M2 - null", treated, "topk/lb",
              lower_is_better=False),
        Claim(f"{treated} raises prefetch precision (M = 4 of 8) beyond the load-matched null",
              "prefetch_precision prefetch@M4 - null", treated, "topk/lb", lower_is_better=False),
        Claim(f"{treated} decodes faster offloaded (LRU + prefetch, M = 4 of 8, PCIe 4) beyond "
              "the load-matched null", "tokens/s pcie4_x16 prefetch@M4 - null", treated,
              "topk/lb", lower_is_better=False, primary=paper),
        Claim(f"{treated} cuts expert-parallel all-to-all bytes per token (path-aware placement, "
              "4 devices) beyond the load-matched null", "a2a_bytes/token path@D4 - null",
              treated, "topk/lb", primary=paper),
        Claim(f"{treated} lowers validation loss vs lb", stats.VAL_LOSS, treated, "topk/lb",
              primary=paper, paper_effect=stats.PAPER_A_LOSS_EFFECT),
        Claim(f"{treated} raises specialization (lower mean squared cosine)",
              stats.SPECIALIZATION, treated, "topk/lb", primary=paper),
        Claim(f"{treated} lowers routing entropy", stats.ROUTING_ENTROPY, treated, "topk/lb"))


CLAIMS = MappingProxyType({
    "specialization": _claims_specialization(),
    "cartesian": tuple(
        claim for other in ("finegrained", "topk_share") for claim in (
            Claim(f"cartesian lowers validation loss vs {other}", stats.VAL_LOSS, "cartesian",
                  other, primary=True),
            Claim(f"cartesian degrades less than {other} with the top-1 expert disabled",
                  stats.TOP1_DISABLED_INCREASE, "cartesian", other, primary=True))),
    "inference": tuple(claim for treated in ("topk/lb+sp+cp", f"topk/lb+{DOSE}x(sp+cp)")
                       for claim in _inference_claims(treated)),
    "finetune": (
        Claim("fine-tuned with lb+sp+cp: lower validation loss on the new domains",
              stats.VAL_LOSS, "finetune/lb+sp+cp", "finetune/lb", primary=True),
        *(Claim(f"fine-tuned with lb+sp+cp: lower validation loss on {domain}",
                stats.domain_val_loss(domain), "finetune/lb+sp+cp", "finetune/lb")
          for domain in FINETUNE_DOMAINS),
        Claim("fine-tuned with lb+sp+cp: higher specialization (lower mean squared cosine)",
              stats.SPECIALIZATION, "finetune/lb+sp+cp", "finetune/lb"),
        Claim(f"fine-tuned with lb+{DOSE}x(sp+cp): lower validation loss on the new domains",
              stats.VAL_LOSS, f"finetune/lb+{DOSE}x(sp+cp)", "finetune/lb"),
        Claim(f"fine-tuned with lb+{DOSE}x(sp+cp): higher specialization", stats.SPECIALIZATION,
              f"finetune/lb+{DOSE}x(sp+cp)", "finetune/lb")),
    "baselines": (
        Claim("lb+sp+cp lowers validation loss vs the orthogonality + variance baselines",
              stats.VAL_LOSS, "lb+sp+cp", "lb+orth+var", primary=True),
        Claim("lb+sp+cp lowers routing entropy vs the baselines", stats.ROUTING_ENTROPY,
              "lb+sp+cp", "lb+orth+var"),
    ),
    "decisive": (
        Claim("topk: lb+sp+cp lowers validation loss vs lb", stats.VAL_LOSS, "topk/lb+sp+cp",
              "topk/lb", primary=True, paper_effect=stats.PAPER_A_LOSS_EFFECT),
        Claim("topk: lb+sp+cp raises specialization (lower mean squared cosine of co-activated "
              "z)", stats.SPECIALIZATION, "topk/lb+sp+cp", "topk/lb", primary=True),
        Claim("topk: lb+sp+cp raises routing-domain NMI vs lb", stats.DOMAIN_NMI,
              "topk/lb+sp+cp", "topk/lb", lower_is_better=False),
        *(claim for claim in _inference_claims("topk/lb+sp+cp") if claim.metric not in (
            stats.VAL_LOSS, stats.SPECIALIZATION))),
    # not paper A's settings (an upcycled model): no claim here is primary
    "upcycle": (
        *(claim for treated in ("lb+sp+cp", f"lb+{DOSE}x(sp+cp)") for claim in (
            Claim(f"upcycled, {treated}: the copied experts specialize over training (lower "
                  "mean squared cosine) vs lb", stats.SPECIALIZATION, f"upcycle/{treated}",
                  "upcycle/lb"),
            Claim(f"upcycled, {treated}: higher routing-domain NMI vs lb", stats.DOMAIN_NMI,
                  f"upcycle/{treated}", "upcycle/lb", lower_is_better=False),
            Claim(f"upcycled, {treated}: lower validation loss vs lb", stats.VAL_LOSS,
                  f"upcycle/{treated}", "upcycle/lb"))),
        Claim("upcycled, lb+sp+cp: higher specialization than Drop-Upcycling",
              stats.SPECIALIZATION, "upcycle/lb+sp+cp", "drop-upcycle/lb"),
        Claim("upcycled, lb+sp+cp: lower validation loss than Drop-Upcycling", stats.VAL_LOSS,
              "upcycle/lb+sp+cp", "drop-upcycle/lb"),
        Claim("Drop-Upcycling: higher specialization than the plain upcycle (both lb)",
              stats.SPECIALIZATION, "drop-upcycle/lb", "upcycle/lb")),
})

# The scales: one set of overrides for every variant of every suite. Both use the dropless
# engine (nothing dropped; on CPU its tiled grouped matmul is as fast as the capacity engine at
# capacity factor 1.25, benchmarks/moe_block.py). The runs of docs/results/ before 2026-12-02
# used the capacity engine at capacity factor 2.
_ENGINE = {"model.moe.engine": "dropless"}
# One evaluation sample for every seed and arm (`data.validation_seed`): with each seed's own
# sample, most of the seed-to-seed spread of a validation loss was the sample's. The runs of
# docs/results/ up to 2026-12-05 predate it (their own seed's sample, 4 batches: 64 windows).
_EVAL = {"data.validation_seed": 0}
# Default: 100 steps of 16 x 128 bytes (205k tokens) per run, evaluated on 16 batches (256
# windows); run with --seeds 4 and 4 evaluation batches, the 56 distinct runs took 52 minutes on
# the 2-core CPU (docs/results/README.md says how this was chosen).
DEFAULT_SCALE = MappingProxyType({
    **_ENGINE, **_EVAL, "train.steps": 100, "train.warmup_steps": 10, "train.log_every": 20,
    "train.eval_every": 100, "train.eval_batches": 16, "train.checkpoint_every": 100,
    "train.progress": False, "train.report": True})
QUICK_SCALE = MappingProxyType({
    **_ENGINE, **_EVAL, "model.d_model": 32, "model.num_layers": 2, "model.num_heads": 2,
    "model.num_kv_heads": 2, "model.d_ff": 64, "model.moe_every": 1, "mesh.devices": 1,
    "train.steps": 3, "train.warmup_steps": 1, "train.batch_size": 2, "train.seq_len": 16,
    "train.log_every": 1, "train.eval_every": 3, "train.eval_batches": 1,
    "train.checkpoint_every": 3, "train.async_checkpoint": False, "train.progress": False,
    "train.report": False})


def _set(config, dotted: str, value) -> None:
    *parents, name = dotted.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    if name not in node:
        raise ValueError(f"experiment override {dotted!r}: no such config field")
    node[name] = value


def default_config_dir() -> pathlib.Path:
    """The shipped configs (`moejax/configs/`, package data; the checkout's configs/ links to
    it), wherever moejax is installed and whatever the working directory."""
    return SHIPPED


def variant_config(variant: Variant, *, seed: int, options: RunOptions = RunOptions()):
    """The resolved ConfigDict of one run: base file, scale (with the variant's `scale` at the
    default scale), variant overrides, the options' overrides, each winning over the ones
    before it, then the variant's steps factor and the seed."""
    path, _, arg = variant.config.partition(":")
    config_dir = pathlib.Path(options.config_dir) if options.config_dir else default_config_dir()
    config = load_config(config_dir / f"{path}.py", arg or None)
    scale = QUICK_SCALE if options.quick else {**DEFAULT_SCALE, **variant.scale}
    for dotted, value in {**scale, **variant.overrides, **options.overrides}.items():
        _set(config, dotted, value)
    config.train.steps *= variant.steps_factor
    config.seed = seed
    return config


def config_differences(suite: str, options: RunOptions = RunOptions()) -> dict:
    """variant name -> {dotted key: value} where its config differs from the first variant's,
    the options of the upcycle it starts from included (as "upcycle.<option>")."""
    def settings(variant):
        upcycle = {f"upcycle.{k}": v for k, v in (variant.upcycle or {}).items()}
        return {**flat_config(variant_config(variant, seed=0, options=options)), **upcycle}

    variants = SUITES[suite]
    first = settings(variants[0])
    out = {}
    for variant in variants:
        config = settings(variant)
        out[variant.name] = {key: config.get(key) for key in sorted(set(first) | set(config))
                             if config.get(key) != first.get(key)}
    return out
