"""Model weights on disk: the one place that reads and writes a `Decoder`'s variables.

Three sources hold weights, and `load_weights` reads each of them:

| source                   | what is on disk                                              |
|--------------------------|--------------------------------------------------------------|
| an export directory      | `params/` (a plain Orbax pytree) and `config.json`           |
| a training workdir       | `checkpoints/<step>/` (its `model` and `config` items; the   |
|                          | trainer's `train/checkpoint.py` writes them), or one step dir |
| a Hugging Face directory | `config.json` and safetensors (`hf_dir.py`, `convert_hf.py`)  |

`export` writes an export from a workdir's step (every model Variable but the RNG streams:
the Params and the router biases, since a selection bias changes which experts a token
picks); `write_export` writes one from a parameter dict (`moejax-hf import`). `load_decoder`
builds a `Decoder` from any source; `load_params` puts a parameter dict into a live model.

Parameter dicts come in the decoder's two layouts (`layout.py`: `stack_params`,
`unstack_params`); every reader returns the layout asked for.

Orbax is imported where a function needs it, so `import moejax.models` stays light.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
from collections.abc import Callable

import jax
from flax import nnx

from moejax.models.checksums import verify_checksums
from moejax.models.decoder import Decoder, DecoderSpec, decoder_spec_from_config
from moejax.models.layout import (
    EXPORTED,
    abstract_decoder,
    abstract_params,
    stack_params,
)

CHECKPOINTS = "checkpoints"  # a workdir's checkpoint directory


# --- into a live model --------------------------------------------------------------------

def load_params(model: Decoder, params: dict) -> None:
    """Loads a parameter dict (either layout, a subset of the model's variables allowed) into
    `model` in place: each array is cast to the dtype of the model's array and put on its
    sharding."""
    state = nnx.state(model, EXPORTED)
    params = stack_params(model.spec, params)
    current = nnx.to_pure_dict(state)
    merged = jax.tree.map(lambda old, new: jax.device_put(new.astype(old.dtype), old.sharding),
                          _subtree(current, params), params)
    nnx.replace_by_pure_dict(state, merged)
    nnx.update(model, state)


def _subtree(current: dict, params: dict) -> dict:
    """The part of `current` with `params`'s keys (an HF source has no router biases)."""
    return {k: _subtree(current[k], v) if isinstance(v, dict) else current[k]
            for k, v in params.items()}


# --- exports --------------------------------------------------------------------------------

def is_export(path: pathlib.Path) -> bool:
    return (path / "config.json").is_file() and (path / "params").exists()


def write_export(out: pathlib.Path, config: dict, params: dict, *, overwrite: bool) -> None:
    """Writes an export directory: `params` (a Decoder's variables as a pure dict, plain
    Orbax) and `config.json` (a config dict with at least its "model" section)."""
    import orbax.checkpoint as ocp

    out.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(out / "params", params, force=overwrite)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_exported(out_dir, *, scan_layers: bool | None = None) -> tuple[DecoderSpec, dict]:
    """Reads an export directory -> (DecoderSpec, variables as a nested dict).

    The params are in the layout of `spec.scan_layers`: the export's config, or `scan_layers`
    when given; a stored layout that differs (read from the checkpoint's tree) is converted.
    Arrays land on the default device.

    Raises:
      FileNotFoundError: `out_dir` or its config.json / params is missing.
    """
    import orbax.checkpoint as ocp

    out = pathlib.Path(out_dir).expanduser().resolve()
    for needed in (out / "config.json", out / "params"):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} does not exist (not a moejax export)")
    spec = _with_layout(decoder_spec_from_config(
        json.loads((out / "config.json").read_text())["model"]), scan_layers)
    with ocp.StandardCheckpointer() as checkpointer:
        stored = checkpointer.metadata(out / "params").item_metadata
        stored_spec = dataclasses.replace(spec, scan_layers="stacks" in stored)
        restored = checkpointer.restore(out / "params", abstract_params(stored_spec))
    return spec, stack_params(spec, restored)


def exported_dtypes(source) -> set[str]:
    """The dtypes an export directory stores its parameters in (empty for anything else,
    e.g. a training workdir)."""
    import orbax.checkpoint as ocp

    params = pathlib.Path(source).expanduser() / "params"
    if not params.exists():
        return set()
    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.metadata(params).item_metadata
    return {str(leaf.dtype) for leaf in jax.tree.leaves(tree) if hasattr(leaf, "dtype")}


def _with_layout(spec: DecoderSpec, scan_layers: bool | None) -> DecoderSpec:
    return spec if scan_layers is None else dataclasses.replace(spec, scan_layers=scan_layers)


# --- a training workdir's steps -------------------------------------------------------------

def _short(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def first_good(steps: list[int], restore_one: Callable[[int], object], directory):
    """Tries the steps newest first -> (step, restored, unreadable newer steps); each step
    that fails is logged as a warning naming it and its error.

    Raises:
      RuntimeError: no step restores; names the directory and each step's error.
    """
    failed = []
    for step in sorted(steps, reverse=True):
        try:
            return step, restore_one(step), [s for s, _ in failed]
        except Exception as error:  # noqa: BLE001 - Orbax/TensorStore raise bare Exception
            logging.getLogger(__name__).warning(
                "checkpoint step %d in %s does not restore (%s); trying an older step",
                step, directory, _short(error))
            failed.append((step, error))
    errors = "; ".join(f"step {step}: {_short(error, 160)}" for step, error in failed)
    raise RuntimeError(f"no readable checkpoint in {directory} ({errors})") from failed[0][1]


def _checkpoint_root(source) -> tuple[pathlib.Path, int | None]:
    """workdir, its checkpoints/ directory or one step directory -> (checkpoints dir, step)."""
    path = pathlib.Path(source).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    if (path / CHECKPOINTS).is_dir():
        return path / CHECKPOINTS, None
    if path.name.isdigit() and (path / "meta").is_dir():
        return path.parent, int(path.name)
    return path, None


def _restore_step_weights(manager, step: int) -> tuple[dict, dict]:
    """One step -> (config JSON, exported variables as a pure dict in the saved layout)."""
    import orbax.checkpoint as ocp

    verify_checksums(pathlib.Path(manager.directory) / str(step))
    config = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    config = config["config"]
    model = abstract_decoder(decoder_spec_from_config(config["model"]))
    target = nnx.to_pure_dict(nnx.state(model))  # the model item: every Variable, RNGs too
    restored = manager.restore(
        step, args=ocp.args.Composite(model=ocp.args.StandardRestore(target)))
    nnx.update(model, restored["model"])
    return config, nnx.to_pure_dict(nnx.state(model, EXPORTED))


def load_checkpoint(source, *, step: int | None = None) -> tuple[int, dict, dict]:
    """A training workdir's (or its checkpoints/ or one step directory's) newest readable
    step, or `step` -> (step, config JSON, exported variables in the saved layout).

    Raises:
      FileNotFoundError: `source` (or the requested step) does not exist or holds no
        checkpoint.
      RuntimeError: no candidate step restores.
    """
    import orbax.checkpoint as ocp

    root, step_in_path = _checkpoint_root(source)
    step = step if step is not None else step_in_path
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    with ocp.CheckpointManager(root, options=options) as manager:
        steps = manager.all_steps()
        if not steps or (step is not None and step not in steps):
            wanted = "" if step is None else f" at step {step}"
            raise FileNotFoundError(f"no checkpoint{wanted} in {root} (steps: {sorted(steps)})")
        restore_one = functools.partial(_restore_step_weights, manager)
        step, (config, params), _ = first_good(
            [step] if step is not None else steps, restore_one, root)
    return step, config, params


def export(source, out_dir, *, step: int | None = None, overwrite: bool = False) -> pathlib.Path:
    """Writes `<out_dir>/params` (plain Orbax pytree) and `<out_dir>/config.json` from a
    training workdir's step (`load_checkpoint`).

    Returns:
      The absolute out_dir.

    Raises:
      FileExistsError: `out_dir` is not empty and `overwrite` is False.
      FileNotFoundError / RuntimeError: as `load_checkpoint`.
    """
    out = pathlib.Path(out_dir).expanduser().resolve()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"export directory {out} is not empty (pass overwrite=True)")
    step, config, params = load_checkpoint(source, step=step)
    write_export(out, config, params, overwrite=overwrite)
    logging.getLogger(__name__).info("exported step %d of %s to %s", step, source, out)
    return out


# --- any source -----------------------------------------------------------------------------

def load_weights(source, *, scan_layers: bool | None = None) -> tuple[DecoderSpec, dict]:
    """An export, a training workdir (its newest readable step) or a Hugging Face directory
    -> (its DecoderSpec, its variables as a pure dict in the layout of the spec, or of
    `scan_layers` when given). An HF directory's tensors keep their stored dtype.

    Raises:
      FileNotFoundError: `source` is none of these.
      RuntimeError / ValueError: a workdir with no readable step; an HF directory moejax
        cannot read (named).
    """
    path = pathlib.Path(source).expanduser().resolve()
    if is_export(path):
        return load_exported(path, scan_layers=scan_layers)
    if (path / "config.json").is_file():
        from moejax.models.convert_hf import from_hf
        from moejax.models.hf_dir import read_hf_dir

        spec, tensors = read_hf_dir(path, **_layout_override(scan_layers))
        return spec, from_hf(tensors, spec, dtype=None)
    if (path / CHECKPOINTS).is_dir() or (path / "meta").is_dir():
        _, config, params = load_checkpoint(path)
        spec = _with_layout(decoder_spec_from_config(config["model"]), scan_layers)
        return spec, stack_params(spec, params)
    raise FileNotFoundError(f"{path} is neither a moejax export (params/, config.json), a "
                            "training workdir (checkpoints/) nor a Hugging Face directory "
                            "(config.json)")


def _layout_override(scan_layers: bool | None) -> dict:
    return {} if scan_layers is None else {"scan_layers": scan_layers}


def load_decoder(source, *, scan_layers: bool | None = None) -> Decoder:
    """A Decoder (float32 parameters) with the weights of `source` (see `load_weights`)."""
    spec, params = load_weights(source, scan_layers=scan_layers)
    model = Decoder(spec, rngs=nnx.Rngs(0))
    load_params(model, params)
    return model
