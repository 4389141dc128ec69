"""train_and_evaluate(config, workdir): the whole training run, read top to bottom.

Sections: the workdir lock, specs, data (checked), model and optimizer (the start-of-run
lines), restore (after the checkpoints' config is compared with this one), signals, loop
(step, NaN guard, evaluators, log, checkpoint; `accounting.RunClock` times each), report. What
it guarantees under faults: README, "Reliability".
"""

from __future__ import annotations

import contextlib
import logging
import math
import pathlib
import signal
import sys

import jax
import numpy as np
import tqdm

from moejax.data import pipeline
from moejax.data.fingerprint import data_fingerprint
from moejax.models.param_count import model_flops_per_token
from moejax.options import flat_config
from moejax.parallel import batch_sharding
from moejax.reporting import metrics as schema
from moejax.reporting.metrics import MetricsWriter
from moejax.reporting.report import write_report
from moejax.train import evaluators, plan, run_data, step
from moejax.train.accounting import RunClock, peak_tflops, start_lines
from moejax.train.checkpoint import Checkpointer, config_json
from moejax.train.init_from import init_from
from moejax.train.optim import learning_rate_schedule, resolve_decay_steps
from moejax.train.specs import RunSpecs, specs_from_config
from moejax.train.state import mesh_and_engine, sharded_model_and_optimizer
from moejax.train.workdir_lock import workdir_lock


class _StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks, so it can save before exiting."""

    def __init__(self):
        self.signal = None

    def __call__(self, signum, frame):
        self.signal = signum

    @contextlib.contextmanager
    def installed(self):
        previous = {s: signal.signal(s, self) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


# a resumed run must keep these (the state's shapes and meaning, the data order); other
# changed options are allowed and named in a warning, e.g. a longer train.steps
RESUME_MUST_MATCH = ("model.", "data.", "seed", "train.batch_size", "train.seq_len",
                     "train.master_weights")  # the optimizer state's structure
RESUME_MAY_CHANGE_SILENTLY = ("mesh.", "train.progress", "train.report", "train.tensorboard",
                              "train.steps", "data.accept_changed_data", "evals.",
                              "train.wandb", "train.mlflow",
                              "hf.")  # the HF record the checkpoints keep (run_data.kept_config)
DECAY_STEPS = "train.decay_steps"  # unset on a resume: the checkpoints' value, not a change


def _check_resume_config(saved: dict, config, directory) -> None:
    """Compares the config the checkpoints were written with to this run's.

    Raises:
      ValueError: a RESUME_MUST_MATCH option differs; names each, with both values.
    """
    old, new = flat_config(saved), flat_config(config_json(config))
    if new.get(DECAY_STEPS) is None and DECAY_STEPS in old:  # unset: the checkpoints' is kept
        new[DECAY_STEPS] = old[DECAY_STEPS]
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k, "<unset>")
                     != new.get(k, "<unset>"))
    # a key only one side has (an option added since the checkpoint was written) is noted only
    fatal = [k for k in changed if k.startswith(RESUME_MUST_MATCH) and k in old and k in new
             and not k.startswith(RESUME_MAY_CHANGE_SILENTLY)]
    if fatal:
        listed = "; ".join(f"{k}={old.get(k, '<unset>')!r} there, {new.get(k, '<unset>')!r} here"
                           for k in fatal)
        raise ValueError(f"the checkpoints in {directory} were written with another config: "
                         f"{listed}. Resume with the same model, data, seed, train.batch_size, "
                         "train.seq_len and train.master_weights, or use another --workdir")
    noted = [k for k in changed if not k.startswith(RESUME_MAY_CHANGE_SILENTLY)]
    if noted:
        logging.getLogger(__name__).warning(
            "resuming with changed options: %s", ", ".join(
                f"{k}={old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in noted))


class NonFiniteError(RuntimeError):
    """A step produced a non-finite loss, gradient or state; that step was not saved."""


class StoppedBySignal(Exception):  # noqa: N818 - a stop, not an error
    """SIGTERM or SIGINT arrived: the step it arrived in was saved, then the run stopped.

    Attributes:
      signum: the signal number (`moejax-train` exits with 128 + signum).
      step: the step saved.
    """

    def __init__(self, signum: int, step: int):
        super().__init__(f"signal {signum}: saved step {step} and stopped; rerun the same "
                         "command to resume")
        self.signum, self.step = signum, step


class _Profile:
    """A `jax.profiler` trace of steps first..last (`train.profile_steps`) into `directory`."""

    def __init__(self, steps: tuple, directory: pathlib.Path):
        self.first, self.last = steps if steps else (0, -1)
        self.directory = directory

    def before(self, step_number: int) -> None:
        if step_number == self.first:
            jax.profiler.start_trace(str(self.directory))

    def after(self, step_number: int) -> None:
        if step_number == self.last:
            jax.profiler.stop_trace()
            print(f"profile of steps {self.first}..{self.last}: {self.directory}", flush=True)


def _say(lines, bar=None) -> None:
    """Prints `lines` on process 0 (through the progress bar when there is one), flushed."""
    if jax.process_index() == 0:
        for line in lines:
            (bar.write if bar is not None else print)(line)
        sys.stdout.flush()


def _check_finite(metrics: dict, step_number: int, checkpointer: Checkpointer) -> None:
    """Raises NonFiniteError when the loss, the gradient norm or the updated parameters are
    not finite; names the newest saved step (async saves finished, every one checked finite
    before it was saved)."""
    values = {name: float(metrics[name])
              for name in (schema.LOSS, schema.TOTAL_LOSS, schema.GRAD_NORM) if name in metrics}
    bad = [f"{name} ({value})" for name, value in values.items() if not math.isfinite(value)]
    if not bool(metrics.pop("finite_state", True)):
        bad.append("updated parameters")
    if not bad:
        return
    checkpointer.wait()
    saved = checkpointer.all_steps()
    where = (f"step {saved[-1]} ({checkpointer.directory / str(saved[-1])})" if saved
             else "none: a rerun starts from scratch")
    raise NonFiniteError(f"non-finite {', '.join(bad)} at step {step_number}; stopped without "
                         f"saving it. The last good checkpoint is {where}; lower "
                         "train.learning_rate or set train.grad_clip before resuming.")


def train_and_evaluate(config, workdir, specs: RunSpecs | None = None) -> dict:
    """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

    `specs`: `specs_from_config(config)`, when the caller has built them already.
    Returns the last metrics row written.

    Raises:
      WorkdirError: `workdir` is a file, read-only, or its `checkpoints` a dangling link.
      WorkdirBusyError: another run is training in `workdir`, or into the checkpoints
        directory it leads to (`train/workdir_lock.py`).
      OutputWriteError: a step's checkpoint or metrics row could not be written (a full
        disk, a save Orbax skipped); the run stopped there.
      NonFiniteError: a step's loss, gradient or updated parameters were not finite; that
        step was not saved, every saved step is finite.
      StoppedBySignal: SIGTERM/SIGINT; the step it arrived in was saved (no evaluation).
    """
    workdir = pathlib.Path(workdir).expanduser().resolve()
    specs = specs if specs is not None else specs_from_config(config)
    plan.check_memory(specs)  # a batch the devices cannot hold: one line, before any data
    with workdir_lock(workdir):
        return _train(config, specs, workdir)


def _train(config, specs: RunSpecs, workdir: pathlib.Path) -> dict:
    """The run itself, in a workdir this process holds."""
    model_spec, loss_spec, train_cfg, data_spec = specs.model, specs.loss, specs.train, specs.data
    clock = RunClock(train_cfg.batch_size * train_cfg.seq_len,
                     model_flops_per_token(model_spec, train_cfg.seq_len),
                     peak_tflops(override=train_cfg.peak_tflops))

    # Data: checked, then the per-host shard of the training stream, and the heldout sets.
    run_data.check_data(data_spec, train_cfg, model_spec.vocab_size)
    data_fields = run_data.data_fields(data_spec, workdir)  # logged with every evaluation
    train_batches = iter(pipeline.make_dataset(
        data_spec, "train", seq_len=train_cfg.seq_len,
        batch_size=run_data.host_batch(train_cfg.batch_size),
        seed=specs.seed, process_index=jax.process_index(),
        process_count=jax.process_count()))
    heldout = run_data.read_heldout(specs)

    # The checkpoints' config, compared with this one's; it fixes the schedule's horizon.
    checkpointer = Checkpointer(workdir, max_to_keep=train_cfg.max_to_keep,
                                async_save=train_cfg.async_checkpoint)
    saved_config = checkpointer.saved_config()
    if saved_config is not None:
        _check_resume_config(saved_config, config, checkpointer.directory)
    train_cfg = resolve_decay_steps(train_cfg, saved_config)

    # Mesh, model and optimizer: the state is initialised in its shardings before any restore,
    # so a checkpoint written on another mesh restores onto this one.
    mesh, engine = mesh_and_engine(specs)
    model, optimizer = sharded_model_and_optimizer(model_spec, train_cfg, specs.seed, mesh,
                                                   engine)
    tokens_sharding = batch_sharding(mesh)
    _say(start_lines(model_spec, mesh, model, optimizer))

    # Restore: the latest good checkpoint, including the data iterator position.
    restored = checkpointer.restore_latest(model, optimizer)
    start = 0
    fingerprint = data_fingerprint(data_spec)
    if restored is not None:
        run_data.check_same_data(restored, fingerprint, data_spec)
        start = restored.step
        train_batches.set_state(restored.data_state)
        print(f"resumed from step {start} ({restored.directory})", flush=True)
    elif train_cfg.init_from:  # fine-tuning: a fresh run starts from these weights
        init_from(model, train_cfg.init_from, optimizer)
        print(f"initialised from {train_cfg.init_from}", flush=True)
    kept_config = run_data.kept_config(config, restored, train_cfg)
    context = evaluators.Context(model, specs, tokens_sharding,
                                 tuple(pipeline.domain_names(data_spec)), heldout)

    def save(step_number, force=False):
        checkpointer.save(step_number, model=model, optimizer=optimizer, config=kept_config,
                          data_state=train_batches.get_state(), force=force,
                          data_fingerprint=fingerprint)

    # Loop. metrics.jsonl keeps the rows up to the restored step: every step appears once.
    writer = MetricsWriter.for_run(workdir, train_cfg, kept_config, keep_through_step=start)
    masked = data_spec.loss_on == "completion"  # else every target: the flags are all set
    profile = _Profile(train_cfg.profile_steps, workdir / "profile")
    bar = tqdm.tqdm(total=train_cfg.steps, initial=start, unit="step", dynamic_ncols=True,
                    disable=not train_cfg.progress or jax.process_index() != 0)
    row, stopped = {}, None
    unchecked = None  # (metrics, step) whose finiteness is read after the next step is queued
    with (_StopRequest().installed() as stop, contextlib.closing(writer),
          contextlib.closing(checkpointer), bar):  # closing: async saves finish, even on errors
        for step_number in range(start + 1, train_cfg.steps + 1):
            profile.before(step_number)
            compiling = step_number == start + 1  # the run's first step compiles the step
            if compiling:
                _say(["compiling the train step ..."], bar)
            step_started = clock.now()
            batch = next(train_batches)
            tokens, segments, trained = (
                jax.make_array_from_process_local_data(tokens_sharding, batch[name])
                for name in ("tokens", "segments", "trained"))
            last = step_number == train_cfg.steps
            due = evaluators.due(specs.evals, step_number, last)
            logged = step_number % train_cfg.log_every == 0 or last or bool(due)
            metrics = step.train_step(model, optimizer, tokens, loss_spec,
                                      train_cfg.grad_accumulation, np.bool_(logged),
                                      segments=segments, trained=trained if masked else None)
            if unchecked is not None:  # the previous step's flags, read while this one runs
                _check_finite(*unchecked, checkpointer)
            stopping = stop.signal  # read once: a signal arriving later waits for the next step
            saving = (step_number % train_cfg.checkpoint_every == 0 or last
                      or stopping is not None)
            unchecked = (metrics, step_number)
            if logged or saving or compiling:  # read the state anyway (compiling: to time it)
                _check_finite(*unchecked, checkpointer)  # waits for the step
                unchecked = None
            seconds = clock.add("compile" if compiling else "step", step_started)  # data + step
            if compiling:
                _say([f"compiled the train step: {seconds:.1f} s (with step {step_number})"], bar)
            profile.after(step_number)
            bar.update(1)
            if logged:  # reading the loss waits for the device: on logged steps only
                bar.set_postfix(loss=f"{float(metrics[schema.LOSS]):.3f}",
                                tok_s=f"{clock.tokens_per_s() or 0.0:.0f}")
            if due:
                with clock.timed("eval"):
                    metrics.update(evaluators.evaluate(due, context), **data_fields)
            if logged or stopping is not None:  # a signal's row has no routing metrics
                if not logged:
                    metrics = {k: v for k, v in metrics.items()
                               if not k.startswith(schema.ROUTING)}
                metrics.update(clock.row())  # the interval's rates, the run's times
                metrics[schema.LEARNING_RATE] = float(
                    learning_rate_schedule(train_cfg)(step_number))
                row = run_data.write_row(writer, step_number, metrics, checkpointer)
                if line := evaluators.summary(row, due):
                    bar.write(f"step {step_number}: loss {row[schema.LOSS]:.3f}  {line}")
            if saving:
                with clock.timed("checkpoint"):  # a signal: save, no evaluation
                    save(step_number, force=stopping is not None)
            if stopping is not None:
                stopped = StoppedBySignal(stopping, step_number)
                break

    if stopped is not None:
        raise stopped
    if train_cfg.report and jax.process_index() == 0 and row:
        print(f"report: {write_report(workdir)}", flush=True)
    return row

