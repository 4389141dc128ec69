"""The import graph follows the data path (style.md section 3, rule 2)."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "moejax"

# subpackage -> moejax modules it may import (prefix match)
ALLOWED = {
    "kernels": ("moejax.kernels",),
    "layers": ("moejax.layers", "moejax.record", "moejax.kernels", "moejax.parallel.axes"),
    "regularizers": ("moejax.regularizers", "moejax.record"),
    "record.py": (),
}


def _moejax_imports(path: pathlib.Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("moejax"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("moejax"):
            yield node.module


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_import_direction(part):
    paths = [PACKAGE / part] if part.endswith(".py") else sorted((PACKAGE / part).rglob("*.py"))
    assert paths and all(p.exists() for p in paths), part
    bad = [(str(p.relative_to(PACKAGE)), name) for p in paths for name in _moejax_imports(p)
           if not name.startswith(ALLOWED[part])]
    assert not bad, f"imports against the data path: {bad}"


def test_layers_and_kernels_import_without_training_stack():
    import subprocess
    import sys

    code = ("import sys, moejax, moejax.layers, moejax.kernels; "
            "bad = [m for m in ('grain', 'orbax', 'matplotlib', 'tensorboard') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True)
