"""moejax-eval: perplexity and bits per byte of held-out text, per domain.

  moejax-eval (--workdir DIR | --export DIR | --hf DIR) --data FILE[,FILE...]
              [--tokenizer T] [--corpus files|jsonl|parquet|hf_dataset]
              [--domain_by file|source] [--text_field F] [--domain_field F]
              [--seq_len N] [--stride S] [--batch_size B] [--json OUT] [--disable_top1]

Reads the --data files (or quoted globs, comma-separated) with moejax's sources, whole and
without a split, tokenizes them with the model's tokenizer (or --tokenizer) and scores every
token of every document once with rolling windows of --seq_len tokens (default: the model's
context, `moejax.evaluation.context_length`) advancing by --stride (default --seq_len), each
document's first token after the prefix token (BOS of a Hugging Face tokenizer that names
one, else EOS); see `moejax.evaluation.perplexity`. A domain is a file (--domain_by file,
default) or what the source names (a file's parent directory, a record's --domain_field).
Prints a table per domain and for all documents: nats per token, bits per token, bits per
UTF-8 byte and per-token perplexity (with --disable_top1 also bits per byte and nats per
token with every router's top-1 expert disabled), and writes them to --json.

Exit status: 0 done; 2 bad input, one line naming the option before any evaluation (a bad
flag, no such data file, a model source that does not load, a tokenizer that is missing or
whose ids do not fit the model, no context length and no --seq_len, unreadable records).
"""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
import sys
import time

from absl import flags

from moejax.cli._command import run_command
from moejax.data.sources.paths import expand_paths
from moejax.evaluation import (
    DomainResult,
    context_length,
    evaluate_documents,
    heldout_documents,
    model_tokenizer,
    prefix_token_id,
)
from moejax.evaluation.perplexity import DOMAIN_BY, HELDOUT_CORPORA, UNITS
from moejax.models import weights

USAGE = ("moejax-eval (--workdir DIR | --export DIR | --hf DIR) --data FILE[,FILE...] "
         "[--tokenizer T] [--corpus files|jsonl|parquet|hf_dataset] [--domain_by file|source] "
         "[--seq_len N] [--stride S] [--batch_size B] [--json OUT] [--disable_top1]")
SOURCES = ("workdir", "export", "hf")
FLAGS = flags.FlagValues()
flags.DEFINE_string("workdir", None, "A training workdir: its newest readable checkpoint.",
                    flag_values=FLAGS)
flags.DEFINE_string("export", None, "A moejax export directory.", flag_values=FLAGS)
flags.DEFINE_string("hf", None, "A Hugging Face model directory (config.json, safetensors).",
                    flag_values=FLAGS)
flags.DEFINE_list("data", None, "Held-out files or quoted globs, comma-separated (for "
                  "--corpus hf_dataset: saved dataset directories).", flag_values=FLAGS)
flags.DEFINE_string("tokenizer", None, "'bytes', a tokenizer.json or a directory holding one "
                    "(default: the model's).", flag_values=FLAGS)
flags.DEFINE_enum("corpus", "files", HELDOUT_CORPORA, "How to read --data (moejax's sources).",
                  flag_values=FLAGS)
flags.DEFINE_enum("domain_by", "file", DOMAIN_BY, "A domain per file, or the source's domains "
                  "(parent directory, --domain_field).", flag_values=FLAGS)
flags.DEFINE_string("text_field", "text", "The text field of a record corpus.",
                    flag_values=FLAGS)
flags.DEFINE_string("domain_field", None, "The domain field of a record corpus.",
                    flag_values=FLAGS)
flags.DEFINE_integer("seq_len", None, "Tokens the model reads per window (default: the "
                     "model's context).", flag_values=FLAGS)
flags.DEFINE_integer("stride", None, "How far windows advance (default: --seq_len).",
                     flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 8, "Windows per forward pass.", flag_values=FLAGS)
flags.DEFINE_string("json", None, "Write the results to this JSON file.", flag_values=FLAGS)
flags.DEFINE_bool("disable_top1", False, "Also evaluate with every router's top-1 expert "
                  "disabled.", flag_values=FLAGS)
flags.mark_flags_as_mutual_exclusive(list(SOURCES), required=True, flag_values=FLAGS)
flags.mark_flag_as_required("data", flag_values=FLAGS)


class InputError(ValueError):
    """Bad input: one line naming the option (exit status 2)."""


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _check_numbers(options) -> None:
    for name, value in (("batch_size", options.batch_size), ("seq_len", options.seq_len),
                        ("stride", options.stride)):
        if value is not None and value < 1:
            raise InputError(f"--{name}={value}; allowed: an integer >= 1")
    if options.json is not None and not pathlib.Path(options.json).parent.is_dir():
        raise InputError(f"--json {options.json}: its directory does not exist")


def _source(options) -> tuple[str, pathlib.Path]:
    """(flag, path) of the model source, checked to be of that kind."""
    flag = next(name for name in SOURCES if getattr(options, name) is not None)
    path = pathlib.Path(getattr(options, flag)).expanduser().resolve()
    kind = {"export": weights.is_export(path),
            "workdir": (path / weights.CHECKPOINTS).is_dir() or (path / "meta").is_dir(),
            "hf": (path / "config.json").is_file() and not weights.is_export(path)}
    what = {"export": "a moejax export (config.json and params/)",
            "workdir": "a training workdir (checkpoints/)",
            "hf": "a Hugging Face directory (config.json)"}
    if not kind[flag]:
        raise InputError(f"--{flag} {getattr(options, flag)}: not {what[flag]}")
    return flag, path


def _load(flag: str, path: pathlib.Path, options):
    """(model, tokenizer, window) of the source, each failure naming its option."""
    try:
        model = weights.load_decoder(path)
    except Exception as error:  # noqa: BLE001 - a source that does not load: any error
        raise InputError(f"--{flag} {path}: does not load: {_one_line(error)}") from error
    try:
        tokenizer = model_tokenizer(path, model.spec.vocab_size, options.tokenizer)
    except Exception as error:  # noqa: BLE001 - the tokenizers library raises plain Exception
        raise InputError(f"--tokenizer: {_one_line(error).removeprefix('tokenizer: ')}") from error
    window = options.seq_len or context_length(path)
    if window is None:
        raise InputError(f"--seq_len: {path} declares no context length (no Hugging Face "
                         "max_position_embeddings, no train.seq_len); pass --seq_len")
    if options.stride is not None and options.stride > window:
        raise InputError(f"--stride={options.stride}; allowed: an integer in [1, {window}] "
                         "(--seq_len)")
    return model, tokenizer, window


@contextlib.contextmanager
def _quiet_reads():
    """Drops Orbax's warnings (absl, below ERROR) while the model is read: a workdir's
    checkpoints are opened read-only ("Given directory is read only"), and a source that
    does not load is one line of ours."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl_logger.setLevel(level)


def _documents(options):
    try:
        return heldout_documents(options.data, options.corpus, domain_by=options.domain_by,
                                 text_field=options.text_field,
                                 domain_field=options.domain_field)
    except ImportError as error:  # parquet without pyarrow, hf_dataset without datasets
        raise InputError(f"--corpus {options.corpus}: {_one_line(error)}") from error
    except (OSError, ValueError) as error:
        text = _one_line(error).removeprefix("data.paths: ").removeprefix("data.paths")
        raise InputError(f"--data: {text}") from error


def _row(result: DomainResult, disable_top1: bool) -> list[str]:
    out = result.as_json()
    cells = [out["domain"], str(out["documents"]), str(out["tokens"]), str(out["bytes"])]
    keys = list(UNITS)
    values = [out[k] for k in keys]
    if disable_top1:
        values += [out["top1_disabled"][k] for k in ("nats_per_token", "bits_per_byte")]
    return cells + ["-" if v is None else f"{v:.4f}" for v in values]


def table(results: list[DomainResult], total: DomainResult, disable_top1: bool) -> str:
    """The results as an aligned text table, one row per domain and "all" last."""
    header = ["domain", "documents", "tokens", "UTF-8 bytes", "nats/token", "bits/token",
              "bits/byte", "perplexity/token"]
    if disable_top1:
        header += ["nats/token top-1 off", "bits/byte top-1 off"]
    rows = [header] + [_row(r, disable_top1) for r in [*results, total]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
                     for row in rows)


def _evaluate(options: flags.FlagValues) -> int:
    try:
        _check_numbers(options)
        if options.corpus != "hf_dataset":
            try:
                expand_paths(tuple(options.data))
            except (OSError, ValueError) as error:
                raise InputError(f"--data: {_one_line(error).removeprefix('data.paths: ')}"
                                 ) from error
        flag, path = _source(options)
        with _quiet_reads():
            model, tokenizer, window = _load(flag, path, options)
        docs = _documents(options)
    except InputError as error:
        print(f"moejax-eval: {error}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    stride = options.stride or window
    results, total = evaluate_documents(model, tokenizer, docs, window=window, stride=stride,
                                        batch_size=options.batch_size,
                                        disable_top1=options.disable_top1)
    seconds = time.perf_counter() - start
    prefix = prefix_token_id(tokenizer)
    print(f"{flag} {path}; tokenizer {tokenizer.name}; windows of {window} tokens, stride "
          f"{stride}; first token after id {prefix}; {len(docs)} documents in {seconds:.1f} s")
    print(table(results, total, options.disable_top1))
    if options.json is not None:
        record = {"source": {flag: str(path)}, "tokenizer": tokenizer.name, "window": window,
                  "stride": stride, "prefix_token": prefix, "batch_size": options.batch_size,
                  "corpus": options.corpus, "domain_by": options.domain_by, "units": UNITS,
                  "seconds": seconds, "domains": [r.as_json() for r in results],
                  "all": total.as_json()}
        pathlib.Path(options.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the evaluation for `argv` (program name first); returns the exit status."""
    return run_command("moejax-eval", USAGE, FLAGS, _evaluate, argv)


def run():
    """Console-script entry point."""
    sys.exit(main())
