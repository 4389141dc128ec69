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
builds a `Decoder` from any source, in the source's `model.param_dtype` (a bfloat16 export or
HF checkpoint at 2 bytes per parameter, `live_params.py`); `load_params` puts a parameter dict
into a live model.

The tokenizer travels with the weights: a workdir keeps its run's tokenizer files in
`<workdir>/tokenizer/` (the trainer writes them for a subword `data.tokenizer`), `export`
copies them into the export's root (beside config.json, where `load_tokenizer(export)` and
`AutoTokenizer.from_pretrained` find them), and `tokenizer_dir(source)` says where any
source's tokenizer is (None: a byte-level model). This module passes paths only; reading a
tokenizer is `moejax.data.tokenizer`'s.

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
import shutil
from collections.abc import Callable, Iterable

import jax
from flax import nnx

from moejax.atomic import atomic_directory
from moejax.models.checksums import verify_checksums
from moejax.models.decoder import Decoder, DecoderSpec, decoder_spec_from_config
from moejax.models.layout import (
    EXPORTED,
    abstract_decoder,
    abstract_params,
    stack_params,
)
from moejax.models.live_params import (  # noqa: F401 - load_params: this module's API too
    decoder_with_params,
    load_params,
    stored_param_dtype,
)

CHECKPOINTS = "checkpoints"  # a workdir's checkpoint directory
TOKENIZER = "tokenizer"  # a workdir's tokenizer files (the trainer's `save_tokenizer`)
BYTES = "bytes"  # data.tokenizer of a byte-level model (moejax.data.tokenizer.BYTES)
_EXPORT = {"what": "moejax export", "marks": ("config.json", "params")}  # atomic_directory


# --- exports --------------------------------------------------------------------------------

def is_export(path: pathlib.Path) -> bool:
    return (path / "config.json").is_file() and (path / "params").exists()


def write_export(out: pathlib.Path, config: dict, params: dict, *, overwrite: bool,
                 files: Iterable[pathlib.Path] = ()) -> None:
    """Writes an export directory, whole or not at all (`moejax.atomic.atomic_directory`):
    `params` (a Decoder's variables as a pure dict, plain Orbax), `config.json` (a config
    dict with at least its "model" section) and a copy of each of `files` (e.g. the
    tokenizer's) under its own name in the root. `overwrite` replaces an export only.

    Raises:
      ValueError: a file named config.json or params.
      FileExistsError, DirectoryBusyError, WriteError: as `atomic_directory`.
    """
    with atomic_directory(out, overwrite=overwrite, **_EXPORT) as directory:
        _write_export_files(directory, config, params, files)


def _write_export_files(directory: pathlib.Path, config: dict, params: dict, files) -> None:
    import orbax.checkpoint as ocp

    files = [pathlib.Path(file) for file in files]
    if clashes := [str(file) for file in files if file.name in _EXPORT["marks"]]:
        raise ValueError(f"an export keeps its own config.json and params/; cannot copy {clashes}")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / "params", params)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for file in files:
        shutil.copyfile(file, directory / file.name)


def load_exported(out_dir, *, scan_layers: bool | None = None) -> tuple[DecoderSpec, dict]:
    """Reads an export directory -> (DecoderSpec, variables as a nested dict).

    The params are in the layout of `spec.scan_layers`: the export's config, or `scan_layers`
    when given; a stored layout that differs (read from the checkpoint's tree) is converted.
    They are read in the config's `model.param_dtype`; a config without one (written before
    the option existed) takes "bfloat16" when every stored array is bfloat16 (an import of a
    bf16 HF checkpoint), else "float32". Arrays land on the default device.

    Raises:
      FileNotFoundError: `out_dir` or its config.json / params is missing.
    """
    import orbax.checkpoint as ocp

    out = pathlib.Path(out_dir).expanduser().resolve()
    for needed in (out / "config.json", out / "params"):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} does not exist (not a moejax export)")
    model = json.loads((out / "config.json").read_text())["model"]
    with ocp.StandardCheckpointer() as checkpointer:
        stored = checkpointer.metadata(out / "params").item_metadata
        model = {"param_dtype": stored_param_dtype(stored), **model}  # the config's first
        spec = _with_layout(decoder_spec_from_config(model), scan_layers)
        stored_spec = dataclasses.replace(spec, scan_layers="stacks" in stored)
        restored = checkpointer.restore(out / "params", abstract_params(stored_spec))
    return spec, stack_params(spec, restored)


def exported_dtypes(source) -> set[str]:
    """The dtypes an export directory stores its parameters in (empty for anything else,
    e.g. a training workdir). `source` may be relative (Orbax reads absolute paths only).

    Raises:
      ValueError: an export whose parameters' metadata does not read.
    """
    import orbax.checkpoint as ocp

    params = pathlib.Path(source).expanduser().resolve() / "params"
    if not params.exists():
        return set()
    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.metadata(params).item_metadata
    if tree is None:
        raise ValueError(f"{params}: its metadata does not read, so its dtypes are unknown")
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
    config = _restore_step_config(manager, step)
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
    root, step_in_path = _checkpoint_root(source)
    step = step if step is not None else step_in_path
    with _read_only_manager(root) as manager:
        restore_one = functools.partial(_restore_step_weights, manager)
        step, (config, params), _ = first_good(_steps(manager, root, step), restore_one, root)
    return step, config, params


def _read_only_manager(root: pathlib.Path):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    return ocp.CheckpointManager(root, options=options)


def _steps(manager, root: pathlib.Path, step: int | None) -> list[int]:
    """[step], or every step of the manager; FileNotFoundError when there is none."""
    steps = manager.all_steps()
    if not steps or (step is not None and step not in steps):
        wanted = "" if step is None else f" at step {step}"
        raise FileNotFoundError(f"no checkpoint{wanted} in {root} (steps: {sorted(steps)})")
    return [step] if step is not None else list(steps)


def _restore_step_config(manager, step: int) -> dict:
    import orbax.checkpoint as ocp

    restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return restored["config"]


def export(source, out_dir, *, step: int | None = None, overwrite: bool = False) -> pathlib.Path:
    """Writes `<out_dir>/params` (plain Orbax pytree), `<out_dir>/config.json` and the files
    of the workdir's `tokenizer/` (if any) from a training workdir's step (`load_checkpoint`),
    whole or not at all as `write_export` (its lock taken before the step is read).

    Returns:
      The absolute out_dir.

    Raises:
      FileExistsError, DirectoryBusyError, WriteError: as `write_export`.
      FileNotFoundError / RuntimeError: as `load_checkpoint`.
    """
    out = pathlib.Path(out_dir).expanduser().resolve()
    with atomic_directory(out, overwrite=overwrite, **_EXPORT) as directory:
        step, config, params = load_checkpoint(source, step=step)
        kept = _workdir(source) / TOKENIZER
        files = sorted(p for p in kept.iterdir() if p.is_file()) if kept.is_dir() else []
        _write_export_files(directory, config, params, files)
    logging.getLogger(__name__).info("exported step %d of %s to %s", step, source, out)
    return out


def _workdir(source) -> pathlib.Path:
    """The workdir of a workdir, its checkpoints/ directory or one step directory."""
    root, _ = _checkpoint_root(source)
    return root.parent if root.name == CHECKPOINTS else root


# --- any source -----------------------------------------------------------------------------

def run_config(source) -> dict | None:
    """The moejax config dict of an export (its config.json) or of a training workdir (or its
    checkpoints/ or one step directory: that step's, else the newest readable step's);
    None for a Hugging Face directory (its config.json is HF's).

    Raises:
      FileNotFoundError / RuntimeError: as `load_weights`.
    """
    path = pathlib.Path(source).expanduser().resolve()
    if is_export(path):
        return json.loads((path / "config.json").read_text())
    if (path / "config.json").is_file():
        return None
    root, step = _checkpoint_root(path)
    with _read_only_manager(root) as manager:
        restore_one = functools.partial(_restore_step_config, manager)
        _, config, _ = first_good(_steps(manager, root, step), restore_one, root)
    return config


def hf_record(source) -> dict | None:
    """What a model's Hugging Face origin said that moejax does not model but an HF export
    writes back (`hf_config.HF_KEPT`: the context length, the special ids): an HF directory's
    config.json values, or the record an export or a workdir keeps under its config's "hf"
    key (`moejax-hf import`; a run started from such a model); None when there is none."""
    from moejax.models import hf_dir
    from moejax.models.hf_config import KEPT

    path = pathlib.Path(source).expanduser().resolve()
    if not is_export(path) and (path / "config.json").is_file():
        return hf_dir.read_kept(path)
    return (run_config(path) or {}).get(KEPT)


def tokenizer_dir(source) -> pathlib.Path | None:
    """Where the tokenizer of a model is: a path `moejax.data.tokenizer.load_tokenizer`
    reads, or None for a byte-level model.

    - an export: its root when it holds a tokenizer.json (`export` and `moejax-hf import`
      put the files there);
    - a training workdir (or its checkpoints/ or one step directory): `<workdir>/tokenizer`
      when it holds a tokenizer.json;
    - a Hugging Face directory: itself when it holds a tokenizer.json, else None;
    - otherwise the run config's `data.tokenizer` (`run_config`): None when it is "bytes" or
      absent (a model imported without tokenizer files, a byte-level run); else that path
      (a tokenizer.json or a directory holding one), e.g. a workdir from before the trainer
      kept the files. An export whose config says "bytes" is byte-level whatever its root
      holds.

    Raises:
      FileNotFoundError: the config names a tokenizer that is neither kept nor at its path;
        `source` is no model.
    """
    path = pathlib.Path(source).expanduser().resolve()
    if is_export(path):
        config, home = json.loads((path / "config.json").read_text()), path
        if _data_tokenizer(config) == BYTES:
            return None
    elif (path / "config.json").is_file():  # a Hugging Face directory
        return path if (path / "tokenizer.json").is_file() else None
    else:
        config, home = None, _workdir(path) / TOKENIZER
    if (home / "tokenizer.json").is_file():
        return home
    name = _data_tokenizer(run_config(path) if config is None else config)
    if name in (None, BYTES):
        return None
    named = pathlib.Path(name).expanduser()
    if named.is_file() or (named / "tokenizer.json").is_file():
        return named
    raise FileNotFoundError(f"{path}: its tokenizer (data.tokenizer={name!r}) is neither kept "
                            f"in {home} nor at that path")


def _data_tokenizer(config: dict) -> str | None:
    data = config.get("data") or {}
    return data.get("tokenizer") if isinstance(data, dict) else None


def load_weights(source, *, scan_layers: bool | None = None) -> tuple[DecoderSpec, dict]:
    """An export, a training workdir (its newest readable step) or a Hugging Face directory
    -> (its DecoderSpec, its variables as a pure dict in the layout of the spec, or of
    `scan_layers` when given). An HF directory's tensors keep their stored dtype, and its
    spec's `param_dtype` is "bfloat16" when all of them are bfloat16, else "float32".

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
        params = from_hf(tensors, spec, dtype=None)
        return dataclasses.replace(spec, param_dtype=stored_param_dtype(params)), params
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
    """A Decoder with the weights of `source` (see `load_weights`) in its `param_dtype`,
    built around them (`live_params.decoder_with_params`: a bfloat16 model never has a
    float32 copy on the device)."""
    return decoder_with_params(*load_weights(source, scan_layers=scan_layers))
