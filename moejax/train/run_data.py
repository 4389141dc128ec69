"""The run's data: the checks before a run, the files a run keeps.

`trainer.py` calls these: `check_data` before any work, `data_fields` (the tokenizer kept in
the workdir, the mixture's shares), `check_same_data` on a resume, `kept_config` (the config
the checkpoints keep), `write_row` for each metrics row, `host_batch` for each host's rows,
and the documents of `config.evals`' heldout evaluators (`read_heldout`, through
`moejax.evaluation.perplexity`); the evaluation is `evaluators.py`'s.
"""

from __future__ import annotations

import importlib
import logging
import pathlib

import jax

from moejax.data import pipeline
from moejax.data.fingerprint import changed_files
from moejax.data.tokenizer import save_tokenizer
from moejax.models import weights
from moejax.models.hf_config import KEPT
from moejax.reporting import metrics as schema
from moejax.reporting.metrics import MetricsWriter
from moejax.train.checkpoint import config_json, one_line_reason
from moejax.train.specs import TrainSpec

PERPLEXITY_MODULE = "moejax.evaluation.perplexity"  # what moejax-eval computes


def perplexity():
    """moejax.evaluation.perplexity (`heldout_documents`, `evaluate_documents`, `rates`),
    imported by name when first needed: it imports moejax.train.step, so moejax.train
    imports it lazily (no import cycle, and the import rule of tests/test_imports.py)."""
    return importlib.import_module(PERPLEXITY_MODULE)


def read_heldout(specs) -> dict[str, list]:
    """{name: documents} of the run's heldout evaluators (`specs.evals`), read once per run
    as moejax-eval reads them (`heldout_documents`: whole, no split, each with its domain by
    the evaluator's `domain_by`).

    Raises:
      ValueError: naming `config.evals.<name>.paths`: a file that does not read, or files
        that hold no text.
    """
    out = {}
    for spec in (e for e in specs.evals if e.kind == "heldout"):
        options, where = spec.options, f"config.evals.{spec.name}.paths"
        try:
            docs = perplexity().heldout_documents(
                options["paths"], options["corpus"], domain_by=options["domain_by"],
                text_field=options["text_field"], domain_field=options.get("domain_field"))
        except (OSError, ValueError) as error:
            raise ValueError(f"{where}: {str(error).removeprefix('data.paths: ')}") from error
        if not any(doc.text for doc in docs):
            raise ValueError(f"{where}={options['paths']} hold no text")
        out[spec.name] = docs
    return out


def host_batch(batch: int) -> int:
    hosts = jax.process_count()
    if batch % hosts:
        raise ValueError(f"train.batch_size={batch} is not divisible by {hosts} processes")
    return batch // hosts


def check_data(data_spec, train: TrainSpec, vocab_size: int) -> None:
    """Both splits hold data, the training split at least one batch of distinct windows, and
    the model's vocabulary holds the tokenizer's ids.

    Raises:
      ValueError: naming the split, its size and the options that decide it.
    """
    pipeline.check_domain_selection(data_spec)
    pipeline.check_tokenizer(data_spec, vocab_size)
    for split, needed, what in (("train", train.batch_size, "train.batch_size"),
                                ("validation", 1, "one")):
        windows = pipeline.num_sequences(data_spec, split, seq_len=train.seq_len)
        if windows < needed:
            raise ValueError(f"the {split} split holds {windows} windows of train.seq_len + 1 = "
                             f"{train.seq_len + 1} tokens, fewer than {what} ({needed}): use a "
                             "larger corpus or a shorter train.seq_len")
    if data_spec.corpus != "arrayrecord":
        missing = pipeline.domains_without_validation(data_spec)
        if missing:
            logging.getLogger(__name__).warning(
                "%d domains have no validation data (one document each, shorter than "
                "data.chunk_bytes): %s%s", len(missing), ", ".join(missing[:8]),
                ", ..." if len(missing) > 8 else "")


def check_same_data(restored, fingerprint: dict, data_spec) -> None:
    """A resumed run reads the files its checkpoint was written on (their sizes and SHA-256),
    unless `data.accept_changed_data`.

    Raises:
      ValueError: naming each added, removed or changed file.
    """
    if restored.data_fingerprint is None or restored.data_fingerprint == fingerprint:
        return
    changed = changed_files(restored.data_fingerprint, fingerprint)
    if data_spec.accept_changed_data:
        logging.getLogger(__name__).warning("resuming on changed data files (accepted by "
                                            "data.accept_changed_data): %s", ", ".join(changed))
        return
    raise ValueError(f"the data files changed since the checkpoint {restored.directory} was "
                     f"written: {', '.join(changed)}; the data order would silently differ. "
                     "Restore the files, or pass --config.data.accept_changed_data=True")


def data_fields(data_spec, workdir: pathlib.Path) -> dict:
    """Keeps the run's tokenizer files in `<workdir>/tokenizer/` (exports and moejax-sample
    read them there) and returns what the metrics record of the data: the mixture's patterns,
    target and realised token shares of the training split."""
    tokenizer = pipeline.tokenizer_of(data_spec)
    if jax.process_index() == 0:
        save_tokenizer(tokenizer, workdir / weights.TOKENIZER)
    mixture = pipeline.mixture_of(data_spec)
    if mixture is None:
        return {}
    print("data.mixture, training token shares (target -> realised): " + ", ".join(
        f"{p} {t:.3f} -> {r:.3f}" for p, t, r in zip(mixture.patterns, mixture.targets,
                                                       mixture.shares, strict=True)), flush=True)
    return {schema.DATA_MIXTURE_PATTERNS: list(mixture.patterns),
            schema.DATA_MIXTURE_TARGETS: mixture.targets,
            schema.DATA_MIXTURE_SHARES: mixture.shares}


def kept_config(config, restored, train: TrainSpec) -> dict:
    """The config the checkpoints keep: this run's, with `train.decay_steps` as resolved
    (`optim.resolve_decay_steps`: the horizon a later resume keeps), plus under "hf" the
    Hugging Face record (`weights.hf_record`: context length, special ids) of the model the
    run started from, so that `moejax-hf export` of a fine-tuned run writes them back; a
    resumed run keeps its checkpoint's."""
    kept = config_json(config)
    kept.setdefault("train", {})["decay_steps"] = train.decay_steps
    record = (restored.config.get(KEPT) if restored is not None
              else weights.hf_record(train.init_from) if train.init_from else None)
    if record:
        kept[KEPT] = record
    return kept


def write_row(writer: MetricsWriter, step_number: int, metrics: dict, checkpointer) -> dict:
    """`writer.write`; a row the disk does not take (it is then missing, never cut) stops the
    run with `OutputWriteError` naming the step and the last complete checkpoint."""
    try:
        return writer.write(step_number, metrics)
    except OSError as error:
        raise checkpointer.write_failed(step_number, one_line_reason(error),
                                        what="metrics row") from error
