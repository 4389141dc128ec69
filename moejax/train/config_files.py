"""Config files: `configs/<name>.py` modules with `get_config(arg=None) -> ConfigDict`.

A config file is user code: one that calls `sys.exit` while it is imported or in
`get_config` raises ValueError naming the file (a config should never end the program that
reads it). A time limit for a file that never finishes belongs to the command that reads it
(`moejax/cli/_command.py`: only cli/ installs signal handlers).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

import ml_collections


def load_module(path):
    """Imports the config file at `path` as a module.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file defines no `get_config`, or called `sys.exit`.
    """
    path = pathlib.Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_moejax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    _without_exit(path, spec.loader.exec_module, module)
    if getattr(module, "get_config", None) is None:
        raise ValueError(f"config file {path} defines no get_config(arg=None)")
    return module


# The shipped configs: package data, beside the code in a wheel and in a checkout (where
# configs/ is a link to this directory).
SHIPPED = pathlib.Path(__file__).resolve().parents[1] / "configs"


def shipped_names() -> list[str]:
    """The names of the shipped configs (`moejax/configs/<name>.py`), sorted."""
    return sorted(path.stem for path in SHIPPED.glob("*.py") if not path.stem.startswith("_"))


def resolve_config(value: str) -> str:
    """`--config`'s value, `FILE[:arg]` or `NAME[:arg]`, as `FILE[:arg]`.

    A FILE that exists, or that looks like a path (a `/` or a `.py` suffix), is kept as given
    (the loader reports a missing one); anything else is the name of a shipped config
    (`default` -> `moejax/configs/default.py`), so `--config default` works from any
    directory and from an installed wheel.

    Raises:
      ValueError: an unknown name (one line, listing the shipped names).
    """
    value = str(value)
    file, colon, arg = value.partition(":")
    if pathlib.Path(file).is_file() or "/" in file or os.sep in file or file.endswith(".py"):
        return value
    names = shipped_names()
    if file in names:
        return f"{SHIPPED / file}.py{colon}{arg}"
    raise ValueError(f"--config {file}: no such file and no shipped config of that name; "
                     f"shipped: {', '.join(names)}")


def load_config(path, arg: str | None = None) -> ml_collections.ConfigDict:
    """Runs `get_config(arg)` of the config file at `path` (`configs/NAME.py[:arg]` style)."""
    module = load_module(path)
    args = () if arg is None else (arg,)
    return _without_exit(path, module.get_config, *args)


def _without_exit(path: pathlib.Path, function, *args):
    """`function(*args)`, with a `sys.exit` in the config file at `path` as a ValueError."""
    try:
        return function(*args)
    except SystemExit as exit_:
        raise ValueError(f"config file {path} called sys.exit({exit_.code!r})") from None


def sibling_module(here: str, name: str):
    """The config module configs/<name>.py next to the config file `here` (pass `__file__`)."""
    return load_module(pathlib.Path(here).with_name(f"{name}.py"))


def sibling_config(here: str, name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """Loads configs/<name>.py next to the config file `here` (pass `__file__`)."""
    return load_config(pathlib.Path(here).with_name(f"{name}.py"), arg)


def default_config_for(spec) -> ml_collections.ConfigDict:
    """The shipped default config with `config.model` set to the DecoderSpec `spec` (a
    model read from a Hugging Face config: the released models' presets, fine-tuning)."""
    import dataclasses

    config = load_config(SHIPPED / "default.py")
    config.model = ml_collections.ConfigDict(dataclasses.asdict(spec))
    return config
