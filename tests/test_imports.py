"""The import graph follows the data path (style.md section 3, rule 2), room by room."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "moejax"

_MODEL = ("moejax.models", "moejax.moe", "moejax.layers", "moejax.kernels", "moejax.record",
          "moejax.options")
# room -> moejax modules it may import (prefix match)
ALLOWED = {
    "kernels": ("moejax.kernels", "moejax.options"),
    "layers": ("moejax.layers", "moejax.options"),
    "moe": ("moejax.moe", "moejax.layers", "moejax.kernels", "moejax.record", "moejax.options"),
    "models": (*_MODEL, "moejax.atomic"),
    "regularizers": ("moejax.regularizers", "moejax.record", "moejax.kernels",
                     "moejax.layers.dtypes", "moejax.options"),
    "parallel": ("moejax.parallel", "moejax.moe", "moejax.kernels", "moejax.options"),
    "data": ("moejax.data", "moejax.options", "moejax.atomic"),
    "reporting": ("moejax.reporting", "moejax.options"),
    "train": (*_MODEL, "moejax.train", "moejax.parallel", "moejax.regularizers", "moejax.data",
              "moejax.reporting", "moejax.atomic"),
    "experiments": ("moejax.experiments", "moejax.train", "moejax.models", "moejax.data",
                    "moejax.reporting", "moejax.options"),
    # the scorers, and held-out perplexity through the trainer's eval_step; no grain pipeline
    "evaluation": ("moejax.evaluation", "moejax.models", "moejax.data.tokenizer",
                   "moejax.data.tokens", "moejax.data.corpus", "moejax.data.sources",
                   "moejax.data.chat", "moejax.train.step", "moejax.options"),
    "record.py": (),
    "options.py": (),
    "atomic.py": (),  # directories written whole or not at all: a leaf every writer uses
    "__init__.py": ("moejax.models", "moejax.moe", "moejax.record"),
}


def _moejax_imports(path: pathlib.Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("moejax"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("moejax"):
            yield node.module


def _paths(part):
    return [PACKAGE / part] if part.endswith(".py") else sorted((PACKAGE / part).rglob("*.py"))


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_import_direction(part):
    paths = _paths(part)
    assert paths and all(p.exists() for p in paths), part
    bad = [(str(p.relative_to(PACKAGE)), name) for p in paths for name in _moejax_imports(p)
           if not name.startswith(ALLOWED[part])]
    assert not bad, f"imports against the data path: {bad}"


def test_every_room_is_checked_and_nothing_imports_the_commands():
    rooms = {p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or
             (p.is_dir() and (p / "__init__.py").exists())}
    assert rooms - {"cli"} == set(ALLOWED)
    bad = [str(p) for part in ALLOWED for p in _paths(part)
           if any(name.startswith("moejax.cli") for name in _moejax_imports(p))]
    assert not bad, bad


def test_model_code_imports_without_training_stack():
    import subprocess
    import sys

    code = ("import sys, moejax, moejax.moe, moejax.models, moejax.layers, moejax.kernels, "
            "moejax.regularizers, moejax.parallel, moejax.evaluation; "
            "bad = [m for m in ('grain', 'orbax', 'matplotlib', 'tensorboardX', 'tqdm', "
            "'ml_collections') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_experiments_read_metrics_without_matplotlib():
    """stats and the runner read numbers through reporting/metrics.py, and the plots import
    matplotlib only when a figure is drawn."""
    import subprocess
    import sys

    code = ("import sys, moejax.experiments.stats, moejax.experiments.runner, "
            "moejax.reporting.report; "
            "sys.exit('imported matplotlib' if 'matplotlib' in sys.modules else 0)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_inference_commands_load_weights_without_the_training_stack():
    """Sampling, exporting and HF conversion read weights through moejax.models.weights:
    nothing of moejax.train is imported."""
    import subprocess
    import sys

    code = ("import sys, moejax.cli.sample, moejax.cli.hf, moejax.cli.export, "
            "moejax.experiments.inference; "
            "bad = [m for m in sys.modules if m.startswith('moejax.train')]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True)
