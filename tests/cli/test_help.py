"""`--help` on every console script of pyproject.toml: usage on stdout, exit 0."""

import importlib
import pathlib
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
CASES = [(name, [flag]) for name in sorted(SCRIPTS) for flag in ("--help", "-h")]
CASES += [("moejax-hf", [command, "--help"]) for command in ("import", "export")]


@pytest.mark.parametrize("name, args", CASES)
def test_help_prints_usage_and_exits_0(name, args, monkeypatch, capsys):
    """The console script's own entry point, in-process, as `NAME ARGS`."""
    module, _, function = SCRIPTS[name].partition(":")
    entry_point = getattr(importlib.import_module(module), function)
    monkeypatch.setattr(sys, "argv", [name, *args])
    with pytest.raises(SystemExit) as exit_:
        entry_point()
    out = capsys.readouterr()
    assert exit_.value.code in (0, None), out.err
    assert out.out.startswith(f"usage: {name}"), out.out[:200]
    assert "--" in out.out and out.err == ""  # the flags are listed, nothing went wrong
