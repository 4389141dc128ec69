"""Reliability, round three: every writer of a directory writes it whole or not at all.

`moejax-export`, `moejax-hf import`, `moejax-hf export` and `moejax-prepare` write through
`moejax.atomic.atomic_directory`: a second writer of the same --out is refused in one line
naming the holder's PID; a failure half-way (ENOSPC, patched in, or on a real 1 MiB tmpfs
when root may mount one; a data error) leaves the old output byte for byte, or nothing, and
one line with exit status 1 (2 for a data error); `--overwrite` replaces the old output only
once the new one is complete.
"""

import errno
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import threading

import jax
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from moejax import atomic
from moejax.cli import export as export_cli
from moejax.cli import hf as hf_cli
from moejax.cli import prepare as prepare_cli
from moejax.data import shards
from moejax.models import hf_dir, weights
from moejax.models.decoder import Decoder, decoder_spec_from_config
from moejax.train import checkpoint
from tests.data.helpers import write_corpus
from tests.models.hf_helpers import FIXTURES

MODEL = {"vocab_size": 19, "d_model": 16, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
         "d_ff": 24, "moe": {"num_experts": 4, "top_k": 2, "d_hidden": 8}}
WRITERS = ("export", "hf import", "hf export", "prepare")
WHAT = {"export": "moejax export", "hf import": "moejax export",
        "hf export": "Hugging Face model directory", "prepare": "prepared corpus"}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """What the four writers read: a training workdir (one step), an imported export, a
    files corpus and its config file."""
    root = tmp_path_factory.mktemp("sources")
    config = ml_collections.ConfigDict({"seed": 0, "model": MODEL, "train": {"steps": 1}})
    model = Decoder(decoder_spec_from_config(config.model), rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    with checkpoint.Checkpointer(root / "work", async_save=False) as checkpointer:
        assert checkpointer.save(1, model=model, optimizer=optimizer, config=config,
                                 rng_key=jax.random.key(1), data_state={})
    assert _run("hf import", root / "imported", root) == 0
    pattern = write_corpus(root / "corpus")
    (root / "cfg.py").write_text(
        "import ml_collections\n\ndef get_config(arg=None):\n"
        "    config = ml_collections.ConfigDict()\n"
        f"    config.data = dict(corpus='files', paths=({pattern!r},), validation_every=3)\n"
        "    return config\n")
    return root


def _run(kind: str, out, sources: pathlib.Path, *flags: str) -> int:
    """Runs one writer's command in this process -> its exit status."""
    if kind == "export":
        return export_cli.main(["moejax-export", "--workdir", str(sources / "work"), "--out",
                                str(out), *flags])
    if kind == "hf import":
        return hf_cli.main(["moejax-hf", "import", "--hf", str(FIXTURES / "mixtral"), "--out",
                            str(out), *flags])
    if kind == "hf export":
        return hf_cli.main(["moejax-hf", "export", "--from", str(sources / "imported"),
                            "--out", str(out), "--max_shard_gb=0.00002", *flags])
    argv = ["moejax-prepare", f"--config={sources / 'cfg.py'}", f"--out={out}", "--workers=0",
            "--noprogress", *flags]
    saved, sys.argv = sys.argv, argv  # config_flags reads its overrides from sys.argv
    try:
        return prepare_cli.run_command("moejax-prepare", prepare_cli.USAGE, prepare_cli.FLAGS,
                                       prepare_cli.main, argv)
    finally:
        sys.argv = saved


def _snapshot(directory: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _assert_readable(kind: str, out: pathlib.Path) -> None:
    if kind == "prepare":
        assert len(shards.RecordDocuments(out, "train")) > 0
    elif kind == "hf export":
        assert hf_dir.read_hf_dir(out)[0].num_layers == 2
    else:
        assert weights.load_exported(out)[0].num_layers == 2


def _no_space_half_way(monkeypatch, kind: str) -> None:
    """The write that comes after the weights (shards) runs out of space half-way."""
    if kind == "prepare":
        real_save = np.save

        def save(path, array, *args, **kwargs):
            if pathlib.Path(path).name == "validation_lengths.npy":
                pathlib.Path(path).write_bytes(b"\x93NUMPY")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return real_save(path, array, *args, **kwargs)

        monkeypatch.setattr(np, "save", save)
        return
    real_write = pathlib.Path.write_text

    def write_text(self, text, *args, **kwargs):
        if self.name == "config.json" and "orbax" not in str(self):
            real_write(self, text[:len(text) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write(self, text, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)


def _prog(kind: str) -> str:
    return "moejax-hf" if kind.startswith("hf") else f"moejax-{kind}"


@pytest.mark.parametrize("kind", WRITERS)
def test_no_space_half_way_leaves_the_old_output_or_nothing(kind, sources, tmp_path, capsys,
                                                            monkeypatch):
    """Without --out: nothing at all is left. Over an old output (--overwrite): it stays byte
    for byte and readable, one line says so, exit 1; the same command with the space back
    replaces it whole (a file only the old one had is gone)."""
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        _no_space_half_way(patch, kind)
        assert _run(kind, out, sources) == 1
    assert capsys.readouterr().err == (f"{_prog(kind)}: no space left on device writing {out} "
                                       "(nothing was written)\n")
    assert os.listdir(tmp_path) == []
    assert _run(kind, out, sources) == 0
    (out / "stale.txt").write_text("only the old output has me")
    old = _snapshot(out)
    capsys.readouterr()
    with monkeypatch.context() as patch:
        _no_space_half_way(patch, kind)
        assert _run(kind, out, sources, "--overwrite") == 1
    assert capsys.readouterr().err == (
        f"{_prog(kind)}: no space left on device writing {out} (nothing was written; the old "
        f"{WHAT[kind]} is unchanged)\n")
    assert _snapshot(out) == old and os.listdir(tmp_path) == ["out"]
    _assert_readable(kind, out)
    assert _run(kind, out, sources, "--overwrite") == 0
    assert not (out / "stale.txt").exists() and os.listdir(tmp_path) == ["out"]
    _assert_readable(kind, out)


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB tmpfs at tmp_path/disk (skipped unless this process may mount one)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
            capture_output=True, check=False).returncode != 0:
        pytest.skip("needs root on Linux to mount a small tmpfs")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _free(directory: pathlib.Path) -> int:
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def _fill(disk: pathlib.Path, leave: int) -> None:
    """Fills `disk` up to `leave` free bytes."""
    (disk / "filler").write_bytes(b"\0" * max(_free(disk) - leave, 0))


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("kind", WRITERS)
def test_a_real_full_disk_leaves_the_old_output(kind, sources, small_disk, capsys, caplog):
    """A disk with room for half an output: a new --out is not created, an old one
    (--overwrite) stays byte for byte; each time one line (Orbax's own error logs and
    tracebacks held back) and nothing beside it; with the space back both succeed."""
    out, before = small_disk / "out", _free(small_disk)
    assert _run(kind, small_disk / "measure", sources) == 0
    size = before - _free(small_disk)
    shutil.rmtree(small_disk / "measure")
    for flags, old, kept in (((), None, ""), (("--overwrite",), True, f"; the old {WHAT[kind]} "
                                                                      "is unchanged")):
        old = old and _snapshot(out)
        _fill(small_disk, size // 2)
        capsys.readouterr()
        caplog.clear()
        assert _run(kind, out, sources, *flags) == 1
        assert capsys.readouterr().err == (f"{_prog(kind)}: no space left on device writing "
                                           f"{out} (nothing was written{kept})\n")
        assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
        assert sorted(os.listdir(small_disk)) == ["filler", *(["out"] if old else [])]
        assert old is None or _snapshot(out) == old
        (small_disk / "filler").unlink()
        assert _run(kind, out, sources, *flags) == 0
        _assert_readable(kind, out)


def test_a_second_export_to_the_same_out_is_refused_in_one_line(sources, tmp_path, capsys,
                                                                  monkeypatch):
    """The first export holds the lock while it reads the checkpoint; a second one to the same
    --out stops at once naming the holder's PID; the first finishes a complete export."""
    out, reading, go_on = tmp_path / "out", threading.Event(), threading.Event()
    real_load = weights.load_checkpoint

    def slow_load(*args, **kwargs):
        if not reading.is_set():
            reading.set()
            assert go_on.wait(60)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(weights, "load_checkpoint", slow_load)
    first = threading.Thread(target=weights.export, args=(sources / "work", out))
    first.start()
    try:
        assert reading.wait(60)
        assert _run("export", out, sources) == 1
    finally:
        go_on.set()
        first.join(60)
    assert capsys.readouterr().err == (f"moejax-export: {out} is being written by another "
                                       f"process (PID {os.getpid()}); try again when it has "
                                       "finished\n")
    assert weights.is_export(out) and os.listdir(tmp_path) == ["out"]  # no lock, no tmp
    _assert_readable("export", out)


def test_a_killed_writer_leaves_nothing_locked_and_its_files_are_cleared(tmp_path):
    """A writer killed (SIGKILL) while it holds the lock: a writer meanwhile is refused
    naming its PID; afterwards the lock is free and its temporary directory removed. An old
    directory moved aside by a writer killed between its two renames is put back."""
    out = tmp_path / "out"
    code = ("import importlib.util, time\n"  # the leaf module alone: no JAX to import
            f"spec = importlib.util.spec_from_file_location('atomic', {atomic.__file__!r})\n"
            "atomic = importlib.util.module_from_spec(spec); spec.loader.exec_module(atomic)\n"
            f"with atomic.atomic_directory({str(out)!r}) as tmp:\n"
            "    (tmp / 'part').write_text('x'); print(tmp, flush=True); time.sleep(60)\n")
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        tmp = pathlib.Path(writer.stdout.readline().strip())
        with pytest.raises(atomic.DirectoryBusyError, match=rf"PID {writer.pid}\)"):
            with atomic.atomic_directory(out):
                pass
    finally:
        writer.kill()
        writer.wait(30)
    assert tmp.is_dir() and atomic.lock_path(out).exists()  # what the killed writer left
    with atomic.atomic_directory(out) as new:
        (new / "a").write_text("new")
    assert not tmp.exists() and os.listdir(tmp_path) == ["out"]
    aside = tmp_path / f".out.old-{writer.pid}-0123abcd"
    out.rename(aside)  # killed after moving the old one aside, before renaming the new in
    (tmp_path / f".out.tmp-{writer.pid}-89abcdef").mkdir()
    with pytest.raises(FileExistsError, match="is not empty"):
        with atomic.atomic_directory(out):
            pass
    assert (out / "a").read_text() == "new" and os.listdir(tmp_path) == ["out"]


def test_overwrite_replaces_only_an_output_of_the_same_kind(sources, tmp_path, capsys):
    """--overwrite onto a training workdir (not an export) is refused in one line and the
    workdir is untouched."""
    work = tmp_path / "work"
    shutil.copytree(sources / "work", work)
    before = _snapshot(work)
    assert _run("export", work, sources, "--overwrite") == 1
    assert capsys.readouterr().err == (f"moejax-export: {work} is not empty and is not a moejax "
                                       "export; it is not replaced (move it away or choose "
                                       "another directory)\n")
    assert _snapshot(work) == before


def test_a_data_error_while_preparing_over_an_old_corpus(sources, tmp_path, capsys,
                                                         monkeypatch):
    """A source's ValueError in the writing pass (a JSONL line that is not UTF-8, named by
    file and line): one line, exit 2, the old prepared corpus byte for byte; a JSONL line
    that is not UTF-8 in the first pass: one line naming the file and line, nothing written."""
    out = tmp_path / "out"
    assert _run("prepare", out, sources) == 0
    old = _snapshot(out)
    real = shards.iter_documents
    message = "data.paths: /data/a.jsonl line 7 is not valid UTF-8: invalid start byte"

    def failing(spec, split=None):
        for number, document in enumerate(real(spec, split)):
            if number == 5:
                raise ValueError(message)
            yield document

    monkeypatch.setattr(shards, "iter_documents", failing)
    capsys.readouterr()
    assert _run("prepare", out, sources, "--overwrite") == 2
    assert capsys.readouterr().err == f"moejax-prepare: {message}\n"
    assert _snapshot(out) == old and os.listdir(tmp_path) == ["out"]
    _assert_readable("prepare", out)
    monkeypatch.undo()
    jsonl = tmp_path / "corpus" / "a.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_bytes(b'{"text": "one"}\n{"text": "two"}\n{"text": "\xff"}\n')
    config = tmp_path / "jsonl.py"
    config.write_text((sources / "cfg.py").read_text().replace("corpus='files'", "corpus='jsonl'")
                      .replace(repr((str(sources / "corpus" / "**" / "*.txt"),)),
                               repr((str(jsonl),))))
    argv = ["moejax-prepare", f"--config={config}", f"--out={tmp_path / 'new'}", "--workers=0"]
    monkeypatch.setattr(sys, "argv", argv)
    assert prepare_cli.run_command("moejax-prepare", prepare_cli.USAGE, prepare_cli.FLAGS,
                                   prepare_cli.main, argv) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"moejax-prepare: data.paths: {jsonl} line 3 is not valid UTF-8")
    assert error.count("\n") == 1 and not (tmp_path / "new").exists()
