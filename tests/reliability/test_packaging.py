"""Installing: the shipped configs by name from any directory, a build-system bound that
builds, extras that parse (no building here)."""

import os
import pathlib
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from moejax.cli import train
from moejax.cli._command import parse
from moejax.experiments.suites import SUITES, default_config_dir, variant_config
from moejax.train.config_files import SHIPPED, load_config, resolve_config, shipped_names

ROOT = pathlib.Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# `python -m build --no-isolation --wheel` built the wheel with exactly this setuptools;
# 76.1.0 and 70.3.0 fail on the SPDX `license = "Apache-2.0"` (PEP 639 arrived in 77.0)
VERIFIED_SETUPTOOLS = Version("77.0.3")


def test_the_checkout_configs_are_the_shipped_ones():
    assert SHIPPED == ROOT / "moejax" / "configs" and (ROOT / "configs").resolve() == SHIPPED
    assert "default" in shipped_names() and "tiny" in shipped_names()
    assert shipped_names() == sorted(p.stem for p in (ROOT / "configs").glob("*.py"))
    assert not (SHIPPED / "__init__.py").exists()  # data, not a room of the package


def _parse_train(monkeypatch, *args):
    """moejax-train's flag parsing, in-process (None when parsed, else the exit status)."""
    argv = ["moejax-train", *args]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv
    return parse("moejax-train", train.USAGE, train.FLAGS, argv)


def test_a_name_loads_from_another_directory_as_the_cli_does(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _parse_train(monkeypatch, "--config", "default", "--workdir", str(tmp_path),
                        "--config.train.steps=7") is None
    expected = load_config(SHIPPED / "default.py")
    expected.train.steps = 7
    assert train.FLAGS.config.to_dict() == expected.to_dict()
    assert _parse_train(monkeypatch, "--config=cartesian_base:small", "--workdir", "w") is None
    assert train.FLAGS.config.to_dict() == load_config(SHIPPED / "cartesian_base.py",
                                                       "small").to_dict()


def test_a_path_stays_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert resolve_config("configs/tiny.py") == "configs/tiny.py"
    mine = tmp_path / "tiny.py"  # an existing file wins over the shipped name
    mine.write_text((SHIPPED / "tiny.py").read_text())
    monkeypatch.chdir(tmp_path)
    assert resolve_config("tiny.py:x") == "tiny.py:x"
    assert resolve_config("tiny:x") == f"{SHIPPED / 'tiny.py'}:x"
    assert resolve_config("configs/missing.py") == "configs/missing.py"  # the loader says


def test_an_unknown_name_is_one_line_listing_the_shipped_names(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status = _parse_train(monkeypatch, "--config", "defualt", "--workdir", str(tmp_path))
    out = capsys.readouterr()
    assert status == 2 and out.out == ""
    assert out.err == ("moejax-train: --config defualt: no such file and no shipped config of "
                       f"that name; shipped: {', '.join(shipped_names())}\n")


def test_suites_read_the_shipped_configs_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_config_dir() == SHIPPED
    variant = SUITES["specialization"][0]
    assert variant_config(variant, seed=0).to_dict()  # loads without the checkout's cwd


def test_the_build_system_bound_is_the_verified_setuptools():
    requires = [Requirement(text) for text in PYPROJECT["build-system"]["requires"]]
    (setuptools,) = [r for r in requires if r.name == "setuptools"]
    lower = [Version(s.version) for s in setuptools.specifier if s.operator in (">=", "==")]
    assert lower and min(lower) >= VERIFIED_SETUPTOOLS
    assert setuptools.specifier.contains(VERIFIED_SETUPTOOLS)
    assert not setuptools.specifier.contains("76.1.0")  # cannot read the SPDX licence
    assert PYPROJECT["project"]["license"] == "Apache-2.0"


def _extra_requirements(extra: str) -> list[Requirement]:
    """The extra's requirements, an alias (`moejax[cuda13]`) replaced by its target's."""
    out = []
    for text in PYPROJECT["project"]["optional-dependencies"][extra]:
        requirement = Requirement(text)
        if requirement.name == PYPROJECT["project"]["name"]:
            out += [r for e in sorted(requirement.extras) for r in _extra_requirements(e)]
        else:
            out.append(requirement)
    return out


def test_every_extra_parses_and_the_gpu_extras_name_their_cuda():
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra in extras:
        assert _extra_requirements(extra), extra
    for cuda in ("cuda12", "cuda13"):
        jax = [r for r in _extra_requirements(cuda) if r.name == "jax"]
        assert jax and jax[0].extras == {cuda} and jax[0].specifier.contains("0.10.2")
    assert [str(r) for r in _extra_requirements("gpu")] == [
        str(r) for r in _extra_requirements("cuda13")]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MOEJAX_TEST_NETWORK") != "1",
                    reason="resolves against PyPI: set MOEJAX_TEST_NETWORK=1")
@pytest.mark.parametrize("extra", ["cuda12", "cuda13"])
def test_the_gpu_extras_resolve_on_pypi(extra):
    """pip resolves the extra's requirements for this Python and platform (no download of the
    wheels, no build of moejax); about 15 s each."""
    texts = [str(r) for r in _extra_requirements(extra)]
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "-q",
                              "--ignore-installed", *texts], capture_output=True, text=True,
                             timeout=180)
    except subprocess.TimeoutExpired:
        pytest.skip("PyPI did not answer within 180 s")
    if out.returncode and ("NewConnectionError" in out.stderr or "Max retries" in out.stderr):
        pytest.skip("no network")
    assert out.returncode == 0, out.stderr[-2000:]
