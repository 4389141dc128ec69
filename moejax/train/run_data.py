"""The run's data: the evaluation, the checks before a run, the files a run keeps.

`trainer.py` calls these: `check_data` before any work, `data_fields` (the tokenizer kept in
the workdir, the mixture's shares), `check_same_data` on a resume, `kept_config` (the config
the checkpoints keep), `evaluate` at every evaluation, `write_row` for each metrics row,
`host_batch` for each host's rows.
"""

from __future__ import annotations

import logging
import math
import pathlib

import jax
import numpy as np

from moejax.data import pipeline
from moejax.data.fingerprint import changed_files
from moejax.data.tokenizer import save_tokenizer
from moejax.models import weights
from moejax.models.hf_config import KEPT
from moejax.regularizers import nmi_from_counts
from moejax.reporting import metrics as schema
from moejax.reporting.metrics import MetricsWriter
from moejax.train import step
from moejax.train.checkpoint import config_json, one_line_reason
from moejax.train.specs import TrainSpec


def evaluate(model, data_spec, train: TrainSpec, seed: int, num_domains: int, sharding) -> dict:
    """Validation loss (overall, and `eval/domain_loss` [num_domains] per domain of the predicted
    token, NaN for a domain the batches do not hold, over `eval/domain_tokens` tokens), bits
    per byte, expert-by-domain counts
    and NMI, and the token-slots dropped by capacity per router, on fixed batches.

    With `train.eval_top1_disabled`, also the loss with each token's top-1 expert disabled in
    every router (CartesianMoE's robustness test). Each process reads its part of every
    batch; `sharding` assembles the global batch.
    """
    results = {}
    modes = [False, True] if train.eval_top1_disabled else [False]
    for disable_top1 in modes:
        batches = iter(pipeline.make_dataset(
            data_spec, "validation", seq_len=train.seq_len,
            batch_size=host_batch(train.batch_size), seed=seed,
            process_index=jax.process_index(), process_count=jax.process_count(),
            shuffle=True))
        sums, counts, dropped, domain_sum, domain_tokens = np.zeros(3), 0.0, [], 0.0, 0.0
        for _ in range(train.eval_batches):
            batch = {name: jax.make_array_from_process_local_data(sharding, value)
                     for name, value in next(batches).items()}
            out = step.eval_step(model, batch["tokens"], batch["domains"], num_domains,
                                 disable_top1, segments=batch["segments"],
                                 token_bytes=batch["token_bytes"], trained=batch["trained"])
            sums += [float(out[name]) for name in ("loss_sum", "tokens", "bytes")]
            domain_sum = domain_sum + np.asarray(out["domain_loss_sum"], np.float64)
            domain_tokens = domain_tokens + np.asarray(out["domain_tokens"], np.float64)
            counts = counts + np.asarray(out.get("domain_counts", 0.0))
            if "dropped_fraction" in out:
                dropped.append(np.asarray(out["dropped_fraction"]))
        suffix = schema.TOP1_DISABLED if disable_top1 else ""
        loss_sum, tokens, nbytes = sums
        results[schema.VAL_LOSS + suffix] = loss_sum / max(tokens, 1.0)
        if dropped:  # [R] per router, mean over the batches
            results[schema.EVAL_ROUTING_DROPPED_FRACTION + suffix] = np.mean(dropped, axis=0)
        if not disable_top1:
            results[schema.VAL_BITS_PER_BYTE] = loss_sum / math.log(2.0) / max(nbytes, 1.0)
            results[schema.EVAL_TOKENS], results[schema.EVAL_BYTES] = int(tokens), int(nbytes)
            results[schema.VAL_PERPLEXITY] = math.exp(results[schema.VAL_LOSS])
            with np.errstate(invalid="ignore", divide="ignore"):
                results[schema.EVAL_DOMAIN_LOSS] = np.where(domain_tokens > 0,
                                                            domain_sum / domain_tokens, np.nan)
            results[schema.EVAL_DOMAIN_TOKENS] = domain_tokens.astype(np.int64)
            if np.ndim(counts):
                results[schema.EVAL_ROUTING_DOMAIN_COUNTS] = counts
                results[schema.EVAL_ROUTING_DOMAIN_NMI] = nmi_from_counts(counts)
    return results


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
