"""Checkpoints: the whole training state to disk and back (the trainer's checkpointer).

Training stage (outside the data path). One step is one Orbax Composite under
`<workdir>/checkpoints/<step>/`:

| item         | handler      | content                                                        |
|--------------|--------------|----------------------------------------------------------------|
| `model`      | StandardSave | `nnx.state(model)` as a pure dict: Params, RouterBias, RNG      |
|              |              | stream keys and counts (every Variable the model owns)          |
| `optimizer`  | StandardSave | `nnx.state(optimizer)`: optax state, the step counter and the   |
|              |              | float32 master weights of bfloat16 parameters (if it keeps any) |
| `meta`       | JsonSave     | format version, step, RNG key (`jax.random.key_data` + impl)    |
| `data_state` | JsonSave     | data iterator state (JSON, or base64 when it is bytes)          |
| `config`     | JsonSave     | `config.to_json_best_effort()`                                  |

Every finished step also gets `<step>/checksums.json` (train/checksums.py), written by process
0 once the step is on disk (an async save: at the next save, `wait` or `close`, the last one
of a run included) and verified before a restore or export; a step whose files do not match
is unreadable.

A save that Orbax skips (a step at or below the newest one it lists) or that fails (a full
disk: at the save, or for an asynchronous save at the next save, `wait` or `close`) raises
`OutputWriteError` naming that step and the last complete one, with the cause's one line.

`Checkpointer.restore_latest` tries the newest step first; a step that does not restore
(missing, truncated or altered files, a wrong step number) is logged as a warning and the next
older one is tried. Unreadable steps newer than the one restored are moved to
`<workdir>/checkpoints.corrupt/`, so that the resumed run can save those step numbers again
(Orbax refuses to save a step at or below the newest one it lists). Orbax itself ignores
unfinished `<step>.orbax-checkpoint-tmp-*` directories and removes them at start-up.

Reading a step's model weights alone (an export, sampling, fine-tuning) is
`moejax.models.weights`, which reads the same layout.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import json
import logging
import os
import pathlib
import shutil
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from moejax.atomic import os_errno
from moejax.models.checksums import verify_checksums, write_checksums
from moejax.models.weights import CHECKPOINTS, first_good

FORMAT_VERSION = 1
CORRUPT = "checkpoints.corrupt"
_JSON_ITEMS = ("meta", "data_state", "config")


@dataclasses.dataclass(frozen=True)
class RestoredInfo:
    """What `restore_latest` gives back besides the model and optimizer it updated.

    Attributes:
      step: the restored step.
      rng_key: the saved key (typed or raw, as saved), or None.
      data_state: the data iterator state (dict or bytes, as saved), or None.
      config: the saved config as a plain JSON dict.
      directory: the step directory restored from.
      data_fingerprint: {input file: "size:sha256"} the run read when it saved, or None (a
        checkpoint written before fingerprints were kept).
    """

    step: int
    rng_key: jax.Array | None
    data_state: dict | list | bytes | None
    config: dict
    directory: pathlib.Path
    data_fingerprint: dict | None = None


class OutputWriteError(RuntimeError):
    """A step's output could not be written: its checkpoint (Orbax skipped or failed to
    write it, e.g. a full disk) or its metrics row. The run stops at that step.

    Attributes:
      step: the step whose output is missing.
      last_complete: the newest complete checkpoint before it (a rerun resumes there), or None.
    """

    def __init__(self, message: str, step: int | None, last_complete: int | None):
        super().__init__(message)
        self.step, self.last_complete = step, last_complete


def one_line_reason(error: BaseException) -> str:
    """The cause of a failed write in a few words: the OS error's text where one is known
    (`atomic.os_errno`: also when a library only says it in words), else the first line."""
    number = os_errno(error)
    if number:
        return os.strerror(number)
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


def _warn(message: str, *args) -> None:
    logging.getLogger(__name__).warning(message, *args)


def _encode_rng(key) -> dict | None:
    """A PRNG key (typed or raw uint32) -> JSON {impl, dtype, shape, data}."""
    if key is None:
        return None
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    data = np.asarray(jax.random.key_data(key) if typed else key)
    return {"impl": str(jax.random.key_impl(key)) if typed else None, "dtype": str(data.dtype),
            "shape": list(data.shape), "data": data.tolist()}


def _decode_rng(saved: dict | None):
    if saved is None:
        return None
    data = jnp.asarray(np.asarray(saved["data"], saved["dtype"]).reshape(saved["shape"]))
    return data if saved["impl"] is None else jax.random.wrap_key_data(data, impl=saved["impl"])


def _encode_data_state(data_state) -> dict:
    """dict/list -> {"encoding": "json"}; bytes -> base64; None -> "none"."""
    if data_state is None:
        return {"encoding": "none", "value": None}
    if isinstance(data_state, bytes | bytearray):
        return {"encoding": "base64", "value": base64.b64encode(data_state).decode("ascii")}
    try:
        return {"encoding": "json", "value": json.loads(json.dumps(data_state))}
    except (TypeError, ValueError) as error:
        raise TypeError(f"data_state must be JSON-serialisable or bytes: {error}") from error


def _decode_data_state(saved: dict):
    if saved["encoding"] == "base64":
        return base64.b64decode(saved["value"])
    return saved["value"]


def config_json(config) -> dict:
    """ConfigDict (or mapping) -> plain JSON dict."""
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    if isinstance(config, Mapping):
        return json.loads(json.dumps(dict(config), default=repr))
    raise TypeError(f"config must be a ConfigDict or a mapping, got {type(config).__name__}")


def _abstract(tree):
    """Arrays -> ShapeDtypeStructs carrying their sharding (the restore target)."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _restore_step(manager: ocp.CheckpointManager, targets: dict, step: int) -> dict:
    """All items of one step; array items restored onto `targets`. Raises on any problem."""
    verify_checksums(pathlib.Path(manager.directory) / str(step))
    args = {name: ocp.args.StandardRestore(target) for name, target in targets.items()}
    args.update({name: ocp.args.JsonRestore() for name in _JSON_ITEMS})
    restored = manager.restore(step, args=ocp.args.Composite(**args))
    meta = restored["meta"]
    if meta.get("format") != FORMAT_VERSION or meta.get("step") != step:
        raise ValueError(f"meta {meta!r} does not belong to step {step} "
                         f"(format {FORMAT_VERSION})")
    return dict(restored)


class Checkpointer:
    """Saves and restores the training state under `<workdir>/checkpoints`.

    Usage from the trainer:
      checkpointer = Checkpointer(workdir, max_to_keep=3)
      info = checkpointer.restore_latest(model, optimizer)  # None on a fresh workdir
      checkpointer.save(step, model=model, optimizer=optimizer, rng_key=key,
                        data_state=iterator.get_state(), config=config)
      checkpointer.close()
    """

    def __init__(self, workdir, *, max_to_keep: int | None = 3, async_save: bool = True):
        """workdir: any path (made absolute here; Orbax needs absolute paths)."""
        self.workdir = pathlib.Path(workdir).expanduser().resolve()
        self.directory = self.workdir / CHECKPOINTS
        self._async_save = async_save
        self._unsealed: set[int] = set()  # steps saved here whose checksums are not written
        self._failure_reported = False  # Orbax re-raises a failed async save at every wait
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def _seal(self) -> None:
        """checksums.json for the steps this Checkpointer saved (call with no save in
        flight; process 0 only). Steps found on disk without checksums are left so: they
        restore with a warning, never sealed after the fact."""
        if jax.process_index() == 0:
            for step in sorted(self._unsealed):
                if (self.directory / str(step)).is_dir():  # max_to_keep may have pruned it
                    write_checksums(self.directory / str(step))
        self._unsealed.clear()

    def all_steps(self) -> list[int]:
        """Finished steps on disk, ascending (an async save in flight may be missing)."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, *, model: nnx.Module, optimizer: nnx.Optimizer, config,
             rng_key: jax.Array | None = None, data_state=None, force: bool = False,
             data_fingerprint: dict | None = None) -> bool:
        """Saves the whole training state as step `step`.

        Asynchronous when the Checkpointer was built with `async_save` (device arrays are
        copied before this returns, so the caller may donate them); `force=True` saves even at
        a step Orbax would skip and waits until the files are on disk (for SIGTERM/SIGINT).

        Args:
          step: the training step (the number of optimizer updates done).
          model: the live model; every Variable of `nnx.state(model)` is saved.
          optimizer: the live `nnx.Optimizer`.
          config: ml_collections ConfigDict (or a JSON-able mapping).
          rng_key: a typed or raw PRNG key array, or None.
          data_state: data iterator state, JSON-serialisable or bytes, or None.
          force: save regardless of Orbax's policy, and block until done.
          data_fingerprint: the input files the run reads ({name: "size:sha256"}), kept in
            the step's meta so that a resume can tell changed data.

        Returns:
          True if a checkpoint was written (or, asynchronously, is being written); False if
          `force` and the step is already on disk.

        Raises:
          OutputWriteError: Orbax skipped the step (at or below the newest step it lists:
            another run writing there?) or failed to write it, or the previous asynchronous
            save failed; names that step and the last complete one.
        """
        step = int(step)
        items = ocp.args.Composite(
            model=ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(model))),
            optimizer=ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(optimizer))),
            meta=ocp.args.JsonSave({"format": FORMAT_VERSION, "step": step,
                                    "rng_key": _encode_rng(rng_key),
                                    "data_fingerprint": data_fingerprint}),
            data_state=ocp.args.JsonSave(_encode_data_state(data_state)),
            config=ocp.args.JsonSave(config_json(config)))
        self.wait()  # Orbax waits for the previous save anyway; this also seals it
        if force:
            if step in self._manager.all_steps():
                logging.getLogger(__name__).info("step %d is already saved in %s", step,
                                                 self.directory)
                return False
        self._orbax_save(step, items, force)
        self._unsealed.add(step)
        if force or not self._async_save:
            self.wait()  # seals it now; an async save is sealed by the next save, wait or close
        return True

    def _orbax_save(self, step: int, items, force: bool) -> None:
        """Orbax's save of `step`; raises OutputWriteError if it fails or skips the step."""
        try:
            saved = self._manager.save(step, args=items, force=force)
        except Exception as error:  # noqa: BLE001 - any failure of the write is reported
            self._failure_reported = True
            raise self.write_failed(step, one_line_reason(error)) from error
        if not saved:
            self._failure_reported = True
            newest = self._manager.latest_step()
            raise self.write_failed(step, f"Orbax skipped the save (the newest step it lists "
                                          f"there is {newest}: another run writing there?)")

    def last_complete(self, before: int | None = None) -> int | None:
        """The newest finished step Orbax lists (below `before`, if given), or None."""
        steps = [s for s in self._manager.all_steps() if before is None or s < before]
        return max(steps, default=None)

    def write_failed(self, step: int | None, reason: str,
                     what: str = "checkpoint") -> OutputWriteError:
        """The error for step `step`'s `what` not written: one line naming the step, the
        reason and the last complete checkpoint (where a rerun resumes)."""
        last = self.last_complete(before=step)
        where = (f"step {last} ({self.directory / str(last)}), where a rerun resumes"
                 if last is not None else "none: a rerun starts from scratch")
        target = self.directory if what == "checkpoint" else self.workdir
        return OutputWriteError(f"the {what} of step {step if step is not None else '?'} could "
                                f"not be written to {target}: {reason}; the last complete "
                                f"checkpoint is {where}", step, last)

    def saved_config(self) -> dict | None:
        """The config (plain JSON dict) of the newest step whose config reads; None if none."""
        self.wait()
        self._manager.reload()
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                return self._manager.restore(
                    step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
            except Exception:  # noqa: BLE001, S112 - restore_latest reports unreadable steps
                continue
        return None

    def restore_latest(self, model: nnx.Module,
                       optimizer: nnx.Optimizer | None = None) -> RestoredInfo | None:
        """Restores the newest readable step into `model` (and `optimizer`) in place.

        Unreadable newer steps are logged (`logging.warning` naming the step and error) and
        moved to `<workdir>/checkpoints.corrupt/`. The live objects are only touched once a
        step has restored completely.

        Returns:
          RestoredInfo, or None when there is no checkpoint at all.

        Raises:
          RuntimeError: checkpoints exist but none restores (names the directory); nothing
            is moved then, since a changed model config makes every step fail.
        """
        self.wait()
        self._manager.reload()
        steps = self._manager.all_steps()
        if not steps:
            return None
        targets = {"model": _abstract(nnx.to_pure_dict(nnx.state(model)))}
        if optimizer is not None:
            targets["optimizer"] = _abstract(nnx.to_pure_dict(nnx.state(optimizer)))
        restore_one = functools.partial(_restore_step, self._manager, targets)
        step, restored, unreadable = first_good(steps, restore_one, self.directory)
        self._set_aside(unreadable)
        nnx.update(model, restored["model"])
        if optimizer is not None:
            nnx.update(optimizer, restored["optimizer"])
        return RestoredInfo(step=step, rng_key=_decode_rng(restored["meta"]["rng_key"]),
                            data_state=_decode_data_state(restored["data_state"]),
                            config=restored["config"], directory=self.directory / str(step),
                            data_fingerprint=restored["meta"].get("data_fingerprint"))

    def _set_aside(self, steps: list[int]) -> None:
        """Moves unreadable step directories out of Orbax's sight (process 0 only)."""
        if not steps or jax.process_index() != 0:
            return
        aside = self.workdir / CORRUPT
        aside.mkdir(exist_ok=True)
        for step in steps:
            target = aside / str(step)
            if target.exists():
                target = aside / f"{step}.{time.time_ns()}"
            shutil.move(self.directory / str(step), target)
            _warn("moved unreadable checkpoint step %d to %s", step, target)
        self._manager.reload()

    def _wait_and_seal(self) -> None:
        self._manager.wait_until_finished()
        self._seal()

    def wait(self) -> None:
        """Blocks until an asynchronous save has finished, then writes the checksums of the
        steps saved since the last wait.

        Raises:
          OutputWriteError: that save (or its checksums) failed; names its step. Reported
            once: Orbax's re-raising of the same failure at later waits is dropped.
        """
        try:
            self._wait_and_seal()
        except Exception as error:  # noqa: BLE001 - any failure of the write is reported
            failed = max(self._unsealed, default=None)
            self._unsealed.clear()
            if failed is None and self._failure_reported:
                return
            self._failure_reported = True
            raise self.write_failed(failed, one_line_reason(error)) from error

    def close(self) -> None:
        """Waits for pending saves (and seals them) and releases Orbax's threads."""
        self.wait()
        if self._failure_reported:  # Orbax's close waits again, and re-raises the failure
            with contextlib.suppress(Exception):
                self._manager.close()
            return
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
