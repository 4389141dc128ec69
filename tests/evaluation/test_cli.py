"""moejax-eval end to end on a tiny export made here: the table, the JSON's fields and units,
a row per domain, the top-1-disabled variant; bad input is one line, exit status 2."""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from moejax.cli import eval as eval_command
from moejax.evaluation import context_length
from moejax.models import weights
from moejax.models.decoder import decoder_spec_from_config
from moejax.models.layout import abstract_params

SPEC = {"vocab_size": 259, "d_model": 16, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
        "d_ff": 24, "moe": {"num_experts": 4, "top_k": 2, "d_hidden": 8}}
FILES = {"code/a.py": "def f(x):\n    return x * 2\n" * 4, "code/b.py": "import os\n",
         "prose/c.txt": "The café served crème brûlée.\n"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(export with train.seq_len 16 in its config, export without one, data glob)."""
    root = tmp_path_factory.mktemp("eval")
    spec = decoder_spec_from_config(SPEC)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (0.5 * rng.normal(size=s.shape)).astype(np.float32),
                          abstract_params(spec, nnx.Param))  # no random init to compile
    model = {"model": dataclasses.asdict(spec)}
    weights.write_export(root / "ex", {**model, "train": {"seq_len": 16}}, params,
                         overwrite=False)
    shutil.copytree(root / "ex", root / "bare")
    (root / "bare" / "config.json").write_text(json.dumps(model))
    for name, text in FILES.items():
        (root / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "data" / name).write_text(text)
    return root / "ex", root / "bare", str(root / "data" / "**" / "*.*")


def test_a_row_per_file_in_the_table_and_the_json(setup, tmp_path, capsys):
    export, _, data = setup
    assert context_length(export) == 16
    out = tmp_path / "eval.json"
    assert eval_command.main(["moejax-eval", "--export", str(export), "--data", data,
                              "--json", str(out), "--batch_size", "4"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "windows of 16 tokens, stride 16" in printed[0]
    assert printed[1].split()[:5] == ["domain", "documents", "tokens", "UTF-8", "bytes"]
    assert [line.split()[0] for line in printed[2:]] == [*FILES, "all"]
    record = json.loads(out.read_text())
    assert record["window"] == record["stride"] == 16 and record["prefix_token"] == 258
    assert set(record["units"]) == {"nats_per_token", "bits_per_token", "bits_per_byte",
                                    "perplexity"}
    rows = record["domains"]
    assert [r["domain"] for r in rows] == list(FILES)
    assert [r["bytes"] for r in rows] == [len(t.encode()) for t in FILES.values()]
    for row in [*rows, record["all"]]:
        assert row["bits_per_byte"] == pytest.approx(row["bits_per_token"])  # bytes: 1 each
        assert row["perplexity"] == pytest.approx(np.exp(row["nats_per_token"]))
        assert "top1_disabled" not in row
    nats = sum(r["nats_per_token"] * r["tokens"] for r in rows)
    assert record["all"]["nats_per_token"] == pytest.approx(nats / record["all"]["tokens"])


def test_disable_top1_adds_columns_and_a_variant_that_differs(setup, tmp_path, capsys):
    export, _, data = setup
    out = tmp_path / "eval.json"
    assert eval_command.main(["moejax-eval", "--export", str(export), "--data", data,
                              "--json", str(out), "--batch_size", "4", "--disable_top1"]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith("bits/byte top-1 off")
    record = json.loads(out.read_text())
    for row in [*record["domains"], record["all"]]:
        off = row["top1_disabled"]
        assert set(off) == set(record["units"])
        assert off["nats_per_token"] != pytest.approx(row["nats_per_token"])
        assert off["bits_per_byte"] == pytest.approx(off["bits_per_token"])


def test_the_source_s_domains_and_a_given_window(setup, tmp_path, capsys):
    _, bare, data = setup
    out = tmp_path / "eval.json"
    assert eval_command.main(["moejax-eval", "--export", str(bare), "--data", data,
                              "--domain_by", "source", "--seq_len", "8", "--stride", "5",
                              "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [r["domain"] for r in record["domains"]] == ["code", "prose"]
    assert [r["documents"] for r in record["domains"]] == [2, 1]
    assert (record["window"], record["stride"]) == (8, 5)
    assert "top1_disabled" not in record["all"]


def _bad_cases(export, bare, data, tmp_path):
    from tests.data.helpers import write_tokenizer

    big = write_tokenizer(tmp_path / "tok")  # 300 ids > the model's 259
    broken = tmp_path / "broken"  # an export whose params/ holds nothing
    (broken / "params").mkdir(parents=True)
    shutil.copy(export / "config.json", broken / "config.json")
    return [
        (["--export", str(broken), "--data", data], f"--export {broken}: does not load: "),
        (["--export", str(export), "--data", "/no/such.txt"], "--data: no file '/no/such.txt'"),
        (["--export", str(tmp_path), "--data", data], f"--export {tmp_path}: not a moejax "
         "export"),
        (["--hf", str(export), "--data", data], "not a Hugging Face directory"),
        (["--export", str(export), "--data", data, "--tokenizer", str(big)],
         "--tokenizer: tokenizer " + str(big / "tokenizer.json") + " has ids 0..299"),
        (["--export", str(bare), "--data", data], "--seq_len: "),
        (["--export", str(export), "--data", data, "--stride", "17"],
         "--stride=17; allowed: an integer in [1, 16]"),
        (["--export", str(export), "--data", data, "--batch_size", "0"], "--batch_size=0"),
        (["--export", str(export), "--data", data, "--domain_field", "d"],
         "--data: domain_field='d' is read by the record corpora"),
        (["--export", str(export), "--data", data, "--json", "/no/dir/x.json"],
         "--json /no/dir/x.json: its directory does not exist"),
    ]


def test_bad_input_is_one_line_naming_the_option(setup, tmp_path, capsys):
    for args, message in _bad_cases(*setup, tmp_path):
        assert eval_command.main(["moejax-eval", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("moejax-eval: ") and len(err.strip().splitlines()) == 1, err
        assert message in err, (message, err)
