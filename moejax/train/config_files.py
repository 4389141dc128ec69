"""Config files: `configs/<name>.py` modules with `get_config(arg=None) -> ConfigDict`."""

from __future__ import annotations

import importlib.util
import pathlib

import ml_collections


def load_module(path):
    """Imports the config file at `path` as a module.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file defines no `get_config`.
    """
    path = pathlib.Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_moejax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if getattr(module, "get_config", None) is None:
        raise ValueError(f"config file {path} defines no get_config(arg=None)")
    return module


def load_config(path, arg: str | None = None) -> ml_collections.ConfigDict:
    """Runs `get_config(arg)` of the config file at `path` (`configs/NAME.py[:arg]` style)."""
    module = load_module(path)
    return module.get_config(arg) if arg is not None else module.get_config()


def sibling_module(here: str, name: str):
    """The config module configs/<name>.py next to the config file `here` (pass `__file__`)."""
    return load_module(pathlib.Path(here).with_name(f"{name}.py"))


def sibling_config(here: str, name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """Loads configs/<name>.py next to the config file `here` (pass `__file__`)."""
    return load_config(pathlib.Path(here).with_name(f"{name}.py"), arg)
