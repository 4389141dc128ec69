"""Evaluators in training (`config.evals`): what an evaluation measures, one table of kinds.

`config.evals.<name>` is a mapping: `kind` (a key of KINDS), `every` (steps between its
evaluations, and at the end; None: `train.eval_every`) and the kind's own options (KINDS).
Each evaluator writes `eval/<name>/<metric>`. An empty `config.evals` is the default set,
the evaluation of before `config.evals` under its flat keys (`val_loss`, `val_bits_per_byte`,
`eval/domain_loss`, `eval/routing/domain_nmi`, `val_loss_top1_disabled`, ...): validation and
routing every `train.eval_every` steps on `train.eval_batches` batches, and top-1-disabled
with `train.eval_top1_disabled`; kind "default" keeps that set beside configured ones.

  validation     (batches) loss, bits_per_byte, perplexity, tokens, bytes, domain_loss [D],
                 domain_tokens [D], domain_names [D] on the validation split
  heldout        (paths, corpus, text_field, domain_field, domain_by, window, stride,
                 batch_size) validation's metrics of every document of those files, equal to
                 moejax-eval's (moejax.evaluation.perplexity; window: train.seq_len)
  top1_disabled  (batches) validation's metrics with each token's top-1 expert disabled in
                 every router, and routing/dropped_fraction [R]
  routing        (batches) routing/domain_counts [R, E, D], routing/domain_nmi [R],
                 routing/dropped_fraction [R], domain_names [D]
  lm_eval        (tasks, limit, num_fewshot, include_path, batch_size, max_length)
                 <task>/<metric> from lm-eval through moejax.evaluation.lm_eval's model
  default        the default set under its flat keys

`batches`: host batches of `train.batch_size` windows (None: `train.eval_batches`). The
validation split is read as before (a fixed shuffled sample); evaluators that read it with
the same top-1 setting and batch count share one pass per evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import math
import pathlib
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType

import jax
import numpy as np

from moejax.data import pipeline
from moejax.data.sources import RECORD_SOURCES
from moejax.data.sources.paths import expand_paths
from moejax.options import check_choice, check_int
from moejax.regularizers import nmi_from_counts
from moejax.reporting import metrics as schema
from moejax.train import run_data, step

LM_EVAL_MODULE = "moejax.evaluation.lm_eval"
NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """One evaluator: `config.evals.<name>`, resolved.

    Attributes:
      name: its name in `config.evals` (the default set's: its kinds).
      kind: a key of KINDS.
      every: steps between its evaluations (it also runs at the last step).
      options: the kind's options, their defaults resolved.
      keys: {metric: logged key} (the default set: only these metrics, flat keys); None:
        every metric as `eval/<name>/<metric>`.
    """

    name: str
    kind: str
    every: int
    options: Mapping = dataclasses.field(default_factory=dict)
    keys: Mapping | None = None


@dataclasses.dataclass(frozen=True)
class Context:
    """What an evaluation reads: the model, the run's specs, the sharding that assembles the
    global batch, the validation split's domain names, the heldout evaluators' documents
    (`run_data.read_heldout`: {name: [Document]}), and the validation passes made so far in
    this evaluation (shared between evaluators)."""

    model: object
    specs: object  # RunSpecs
    sharding: object
    domain_names: tuple
    heldout: Mapping
    passes: dict = dataclasses.field(default_factory=dict)


# --- One pass over the validation batches, and what the kinds make of it ---
def _pass(ctx: Context, disable_top1: bool, batches: int) -> dict:
    """Sums of `step.eval_step` over `batches` batches of the validation split (read as
    before; made once per evaluation): {"loss_sum", "tokens", "bytes", "domain_loss_sum",
    "domain_tokens" [D], "counts" [R, E, D] (0.0 without routers), "dropped" [[R] per
    batch]}."""
    key = (disable_top1, batches)
    if key in ctx.passes:
        return ctx.passes[key]
    train = ctx.specs.train
    stream = iter(pipeline.make_dataset(
        ctx.specs.data, "validation", seq_len=train.seq_len,
        batch_size=run_data.host_batch(train.batch_size), seed=ctx.specs.seed,
        process_index=jax.process_index(), process_count=jax.process_count(), shuffle=True))
    sums, counts, dropped, domain_sum, domain_tokens = np.zeros(3), 0.0, [], 0.0, 0.0
    for _ in range(batches):
        batch = {name: jax.make_array_from_process_local_data(ctx.sharding, value)
                 for name, value in next(stream).items()}
        out = step.eval_step(ctx.model, batch["tokens"], batch["domains"],
                             len(ctx.domain_names), disable_top1, segments=batch["segments"],
                             token_bytes=batch["token_bytes"], trained=batch["trained"])
        sums += [float(out[name]) for name in ("loss_sum", "tokens", "bytes")]
        domain_sum = domain_sum + np.asarray(out["domain_loss_sum"], np.float64)
        domain_tokens = domain_tokens + np.asarray(out["domain_tokens"], np.float64)
        counts = counts + np.asarray(out.get("domain_counts", 0.0))
        if "dropped_fraction" in out:
            dropped.append(np.asarray(out["dropped_fraction"]))
    ctx.passes[key] = dict(zip(("loss_sum", "tokens", "bytes"), sums, strict=True),
                           domain_loss_sum=domain_sum, domain_tokens=domain_tokens,
                           counts=counts, dropped=dropped, domain_names=list(ctx.domain_names))
    return ctx.passes[key]


def loss_metrics(sums: dict) -> dict:
    """loss (nats per scored token), bits_per_byte (bits per UTF-8 byte), perplexity (per
    token), tokens, bytes (`moejax.evaluation.perplexity.rates` of the sums: moejax-eval's
    formula; NaN where nothing was scored), domain_loss [D] (nats per token; NaN for a domain
    with no scored token), domain_tokens [D], domain_names."""
    module = run_data.perplexity()
    totals = module.Totals(tokens=int(round(sums["tokens"])), bytes=int(round(sums["bytes"])),
                           nats=float(sums["loss_sum"]))
    rates = {k: math.nan if v is None else v for k, v in module.rates(totals).items()}
    with np.errstate(invalid="ignore", divide="ignore"):
        domain_loss = np.where(sums["domain_tokens"] > 0,
                               sums["domain_loss_sum"] / sums["domain_tokens"], np.nan)
    return {"loss": rates["nats_per_token"], "bits_per_byte": rates["bits_per_byte"],
            "perplexity": rates["perplexity"], "tokens": totals.tokens, "bytes": totals.bytes,
            "domain_loss": domain_loss, "domain_tokens": np.asarray(
                sums["domain_tokens"]).astype(np.int64),
            "domain_names": sums["domain_names"]}


def dropped_metrics(sums: dict) -> dict:
    """routing/dropped_fraction [R] (mean over the batches); {} without routers."""
    return ({"routing/dropped_fraction": np.mean(sums["dropped"], axis=0)} if sums["dropped"]
            else {})


def routing_metrics(sums: dict) -> dict:
    """routing/domain_counts [R, E, D] (top-1 expert vs domain), routing/domain_nmi [R],
    routing/dropped_fraction [R], domain_names; {} without routers."""
    if not np.ndim(sums["counts"]):
        return dropped_metrics(sums)
    return {"routing/domain_counts": sums["counts"],
            "routing/domain_nmi": nmi_from_counts(sums["counts"]),
            **dropped_metrics(sums), "domain_names": sums["domain_names"]}


def _validation(ctx: Context, spec: EvalSpec) -> dict:
    return loss_metrics(_pass(ctx, False, spec.options["batches"]))


def _heldout(ctx: Context, spec: EvalSpec) -> dict:
    """The documents read at the run's start (`run_data.read_heldout`) scored by moejax-eval's
    `evaluate_documents` on the live model: "all" and the domains (by name), `loss_metrics`."""
    options, train = spec.options, ctx.specs.train
    domains, total = run_data.perplexity().evaluate_documents(
        ctx.model, pipeline.tokenizer_of(ctx.specs.data), ctx.heldout[spec.name],
        window=options.get("window") or train.seq_len, stride=options.get("stride"),
        batch_size=options.get("batch_size") or train.batch_size)
    return loss_metrics({"loss_sum": total.totals.nats, "tokens": total.totals.tokens,
                         "bytes": total.totals.bytes, "domain_names": [d.domain for d in domains],
                         "domain_loss_sum": np.array([d.totals.nats for d in domains], float),
                         "domain_tokens": np.array([d.totals.tokens for d in domains], float)})


def _top1_disabled(ctx: Context, spec: EvalSpec) -> dict:
    sums = _pass(ctx, True, spec.options["batches"])
    return {**loss_metrics(sums), **dropped_metrics(sums)}


def _routing(ctx: Context, spec: EvalSpec) -> dict:
    return routing_metrics(_pass(ctx, False, spec.options["batches"]))


def _lm_eval(ctx: Context, spec: EvalSpec) -> dict:
    """`tasks` run by lm-eval on the live model: {<task>/<metric>: number} (lm-eval's
    "acc,none" is "acc"; another filter's "exact_match,strict" is "exact_match/strict")."""
    options = spec.options
    out = importlib.import_module("lm_eval").simple_evaluate(
        model=_live_lm(ctx, options), tasks=list(options["tasks"]), limit=options.get("limit"),
        num_fewshot=options.get("num_fewshot"), log_samples=False, verbosity="ERROR",
        task_manager=_task_manager(options.get("include_path")))
    return {f"{task}/{metric.removesuffix(',none').replace(',', '/')}": value
            for task, values in out["results"].items() for metric, value in values.items()
            if isinstance(value, int | float) and not isinstance(value, bool)}


@functools.cache
def _task_manager(include_path: str | None):
    """lm-eval's task index (6 s to build on the 2-core CPU): once per run, not per evaluation."""
    return importlib.import_module("lm_eval.tasks").TaskManager(include_path=include_path)


def _live_lm(ctx: Context, options: Mapping):
    """moejax.evaluation.lm_eval's MoejaxLM around the live model and the run's tokenizer.
    Imported by name: moejax.evaluation imports moejax.train, not the other way round."""
    return importlib.import_module(LM_EVAL_MODULE).MoejaxLM.from_model(
        ctx.model, pipeline.tokenizer_of(ctx.specs.data),
        batch_size=options.get("batch_size") or 8,
        max_length=options.get("max_length") or ctx.specs.train.seq_len, seed=ctx.specs.seed)


# --- The checks of a kind's options, before any work ---
def _check_batches(where: str, options: dict, train) -> dict:
    check_int(f"{where}.batches", options.get("batches"), optional=True)
    return {**options, "batches": options.get("batches") or train.eval_batches}


def _check_heldout(where: str, options: dict, train) -> dict:
    """paths given and matching files, corpus and domain_by moejax-eval's choices,
    domain_field only for a record corpus, window / stride / batch_size integers (stride at
    most the window); errors name `config.evals.<name>.<option>`. Defaults: corpus "files",
    text_field "text", domain_by "source" (a file's parent directory, a record's
    domain_field)."""
    paths = options.get("paths")
    paths = (paths,) if isinstance(paths, str) else tuple(paths or ())
    if not paths or not all(isinstance(p, str) for p in paths):
        raise ValueError(f"{where}.paths={options.get('paths')!r}; allowed: a file, a glob or "
                         "a sequence of them")
    options = {**options, "paths": paths, "corpus": options.get("corpus") or "files",
               "text_field": options.get("text_field") or "text",
               "domain_by": options.get("domain_by") or "source"}
    for option, allowed in (("corpus", "HELDOUT_CORPORA"), ("domain_by", "DOMAIN_BY")):
        check_choice(f"{where}.{option}", options[option], getattr(run_data.perplexity(), allowed))
    if options.get("domain_field") is not None and options["corpus"] not in RECORD_SOURCES:
        raise ValueError(f"{where}.domain_field={options['domain_field']!r} is read by the "
                         f"record corpora ({', '.join(RECORD_SOURCES)}), not corpus="
                         f"{options['corpus']!r}")
    window = options.get("window") or train.seq_len
    for option, high in (("window", None), ("batch_size", None), ("stride", window)):
        check_int(f"{where}.{option}", options.get(option), 1, high, optional=True)
    if options["corpus"] != "hf_dataset":
        try:
            expand_paths(paths)
        except (ValueError, FileNotFoundError) as error:
            raise ValueError(str(error).replace("data.", f"{where}.")) from None
    return options


def _check_lm_eval(where: str, options: dict, train) -> dict:
    tasks = options.get("tasks")
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks or ())
    if not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise ValueError(f"{where}.tasks={options.get('tasks')!r}; allowed: a task name or a "
                         "non-empty sequence of lm-eval task names")
    for option, low in (("limit", 1), ("num_fewshot", 0), ("batch_size", 1), ("max_length", 1)):
        check_int(f"{where}.{option}", options.get(option), low, optional=True)
    path = options.get("include_path")
    if path is not None and not (isinstance(path, str) and pathlib.Path(path).is_dir()):
        raise ValueError(f"{where}.include_path={path!r}; allowed: None or a directory of "
                         "lm-eval task YAML files")
    for module, what in (("lm_eval", "the lm-eval package (pip install lm-eval)"),
                         (LM_EVAL_MODULE, f"{LM_EVAL_MODULE}, which this install lacks")):
        if not _importable(module):  # a config error: moejax-train's one line, exit 2
            raise ValueError(f"{where}.kind='lm_eval' needs {what}")
    return {**options, "tasks": tasks}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


@dataclasses.dataclass(frozen=True)
class Kind:
    """An evaluator kind: `run(context, spec) -> {metric: value}`, the options it takes
    (besides `kind` and `every`) and `check(where, options, train) -> options resolved`."""

    run: Callable[[Context, EvalSpec], dict]
    options: tuple[str, ...]
    check: Callable[[str, dict, object], dict] = _check_batches


KINDS = MappingProxyType({
    "validation": Kind(_validation, ("batches",)),
    "heldout": Kind(_heldout, ("paths", "corpus", "text_field", "domain_field", "domain_by",
                               "window", "stride", "batch_size"), _check_heldout),
    "top1_disabled": Kind(_top1_disabled, ("batches",)),
    "routing": Kind(_routing, ("batches",)),
    "lm_eval": Kind(_lm_eval, ("tasks", "limit", "num_fewshot", "include_path", "batch_size",
                               "max_length"), _check_lm_eval),
    "default": Kind(None, ()),  # expands to `default_set` when the specs are built
})

# the default set's flat keys (the evaluation of before config.evals)
DEFAULT_KEYS = MappingProxyType({
    "loss": schema.VAL_LOSS, "bits_per_byte": schema.VAL_BITS_PER_BYTE,
    "perplexity": schema.VAL_PERPLEXITY, "tokens": schema.EVAL_TOKENS,
    "bytes": schema.EVAL_BYTES, "domain_loss": schema.EVAL_DOMAIN_LOSS,
    "domain_tokens": schema.EVAL_DOMAIN_TOKENS, "domain_names": schema.EVAL_DOMAIN_NAMES,
    "routing/domain_counts": schema.EVAL_ROUTING_DOMAIN_COUNTS,
    "routing/domain_nmi": schema.EVAL_ROUTING_DOMAIN_NMI,
    "routing/dropped_fraction": schema.EVAL_ROUTING_DROPPED_FRACTION})
DEFAULT_TOP1_KEYS = MappingProxyType({
    "loss": schema.VAL_LOSS_TOP1_DISABLED,
    "routing/dropped_fraction": schema.EVAL_ROUTING_DROPPED_FRACTION_TOP1_DISABLED})


def default_set(train, every: int | None = None) -> tuple[EvalSpec, ...]:
    """The default evaluators: validation and routing, and top-1-disabled with
    `train.eval_top1_disabled`, on `train.eval_batches` batches, under their flat keys."""
    every, options = every or train.eval_every, {"batches": train.eval_batches}
    kinds = [("validation", DEFAULT_KEYS), ("routing", DEFAULT_KEYS)]
    if train.eval_top1_disabled:
        kinds.append(("top1_disabled", DEFAULT_TOP1_KEYS))
    return tuple(EvalSpec(kind, kind, every, options, keys) for kind, keys in kinds)


def evals_from_config(evals_config, train) -> tuple[EvalSpec, ...]:
    """`config.evals` -> the evaluators; empty: `default_set(train)`.

    Raises:
      ValueError: one line naming `config.evals.<name>.<option>` and what is allowed (a
        heldout glob that matches no file, lm-eval not installed).
    """
    evals = dict(evals_config or {})
    if not evals:
        return default_set(train)
    out, defaults = [], 0
    for name, options in sorted(evals.items()):
        where = f"config.evals.{name}"
        if not (isinstance(name, str) and NAME.fullmatch(name)):
            raise ValueError(f"{where}: allowed names: letters, digits, '_', '.', '-'")
        if not hasattr(options, "items"):
            raise ValueError(f"{where}={options!r}; allowed: a mapping with 'kind' "
                             f"({', '.join(KINDS)}) and its options")
        options = {k: v for k, v in dict(options).items()}
        kind = options.pop("kind", None)
        check_choice(f"{where}.kind", kind, KINDS)
        every = options.pop("every", None)
        check_int(f"{where}.every", every, optional=True)
        unknown = sorted(set(options) - set(KINDS[kind].options))
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {', '.join(unknown)} for kind="
                             f"{kind!r}; allowed: {', '.join(('every', *KINDS[kind].options))}")
        if kind == "default":
            defaults += 1
            out.extend(default_set(train, every))
            continue
        out.append(EvalSpec(name, kind, every or train.eval_every,
                            KINDS[kind].check(where, options, train)))
    if defaults > 1:
        raise ValueError("config.evals: kind='default' appears more than once; allowed: once "
                         "(its keys are the flat val_loss, eval/domain_loss, ...)")
    return tuple(out)


# --- The run's side: what is due, evaluate ---
def due(evals, step_number: int, last: bool) -> tuple[EvalSpec, ...]:
    """The evaluators that run at `step_number`: every `every` steps, and all at the last."""
    return tuple(e for e in evals if last or step_number % e.every == 0)


def keyed(spec: EvalSpec, metrics: dict) -> dict:
    """An evaluator's metrics under their logged keys (`EvalSpec.keys`)."""
    if spec.keys is None:
        return {f"{schema.EVAL}{spec.name}/{metric}": v for metric, v in metrics.items()}
    return {spec.keys[metric]: v for metric, v in metrics.items() if metric in spec.keys}


def evaluate(evals, context: Context) -> dict:
    """The metrics of `evals` (passes shared between them) under their logged keys."""
    context, out = dataclasses.replace(context, passes={}), {}
    for spec in evals:
        out.update(keyed(spec, KINDS[spec.kind].run(context, spec)))
    return out


def summary(row: dict, evals) -> str:
    """The evaluation part of the progress line: `val_loss 2.345 (3.38 bits/byte)`, then
    `<name> 2.401 (3.46 bits/byte)` for each configured evaluator with a loss in `row`."""
    parts = []
    if schema.VAL_LOSS in row:
        parts.append(f"val_loss {row[schema.VAL_LOSS]:.3f} "
                     f"({row[schema.VAL_BITS_PER_BYTE]:.2f} bits/byte)")
    for spec in (e for e in evals if e.keys is None):
        prefix = f"{schema.EVAL}{spec.name}/"
        if prefix + "loss" in row:
            parts.append(f"{spec.name} {row[prefix + 'loss']:.3f} "
                         f"({row[prefix + 'bits_per_byte']:.2f} bits/byte)")
    return "  ".join(parts)
