"""moejax-lm-eval, offline, on a tiny byte-level export: lm-eval's answers and metrics equal
moejax.evaluation's own (and a NumPy forward's), for multiple choice, perplexity and greedy
generation; the model's options and errors. Skipped without lm-eval (`moejax[lmeval]`)."""

import dataclasses
import glob
import json
import math
import pathlib
import types

import numpy as np
import pytest

pytest.importorskip("lm_eval")

from flax import nnx  # noqa: E402 - after the skip

from moejax.cli import lm_eval as cli  # noqa: E402
from moejax.data.tokenizer import load_tokenizer  # noqa: E402
from moejax.evaluation import generate_until, loglikelihood, loglikelihood_rolling  # noqa: E402
from moejax.models import weights  # noqa: E402
from moejax.models.decoder import Decoder, decoder_spec_from_config  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
TASK_DIR = ROOT / "tests" / "evaluation" / "lm_eval_task"
TASKS = "moejax_toy_mc,moejax_toy_rolling,moejax_toy_generate"
SPEC = {"vocab_size": 259, "d_model": 16, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
        "d_ff": 24, "scan_layers": False, "moe": {"num_experts": 4, "top_k": 2, "d_hidden": 8}}
MAX_LENGTH, BATCH = 48, 4  # the MC rows (up to 67 bytes) lose context, two texts take 2 windows


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub, a datasets cache of the test's own, the checkout's root as the working
    directory (the task YAMLs name their JSONL from there), lm-eval's environment change
    undone; and lm-eval indexes only the tests' tasks, not its 13,986 built-in YAMLs (4 s)."""
    import datasets
    from lm_eval.tasks import TaskManager

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.chdir(ROOT)
    index_all = TaskManager.__init__

    def own_tasks_only(self, *args, **kwargs):
        index_all(self, *args, **{**kwargs, "include_defaults": False})

    monkeypatch.setattr(TaskManager, "__init__", own_tasks_only)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A byte-level export (no tokenizer files, so the byte tokenizer) and its Decoder."""
    tmp_path = tmp_path_factory.mktemp("lm_eval")
    spec = decoder_spec_from_config(SPEC)
    model = Decoder(spec, rngs=nnx.Rngs(3))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    weights.write_export(tmp_path / "ex", {"model": dataclasses.asdict(spec)}, params,
                         overwrite=False)
    return tmp_path / "ex", weights.load_decoder(tmp_path / "ex")


def _run(export_dir, out, *extra) -> tuple[dict, dict]:
    """moejax-lm-eval on the toy tasks: (results JSON, {task: its logged samples by doc})."""
    argv = ["moejax-lm-eval", "--model", "moejax", "--model_args",
            f"export={export_dir},max_length={MAX_LENGTH}", "--batch_size", str(BATCH),
            "--tasks", TASKS, "--include_path", str(TASK_DIR), "--output_path", str(out),
            "--log_samples", *extra]
    assert cli.main(argv) == 0
    results = json.loads(pathlib.Path(*glob.glob(f"{out}/*/results_*.json")).read_text())
    samples = {}
    for task in TASKS.split(","):
        (path,) = glob.glob(f"{out}/*/samples_{task}_*.jsonl")
        rows = [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]
        samples[task] = sorted(rows, key=lambda row: row["doc_id"])
    return results, samples


def _log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _numpy_logprob(model, context: str, continuation: str) -> float:
    """The continuation's log-probability by tests/reference_decoder.py's float64 forward,
    after lm-eval's left truncation to MAX_LENGTH + 1 tokens."""
    from tests.models.test_decoder import _params_np
    from tests.reference_decoder import decoder_ref

    ids = np.frombuffer((context + continuation).encode(), np.uint8).astype(np.int64)
    ids, count = ids[-(MAX_LENGTH + 1):], len(continuation.encode())
    logits, _ = decoder_ref(ids[None, :-1], _params_np(model), model.spec)
    logprobs = _log_softmax(logits[0])[np.arange(len(ids) - 1), ids[1:]]
    return float(logprobs[-count:].sum())


def test_lm_eval_numbers_equal_moejax_evaluation(offline, export, tmp_path):
    """Each choice's log-likelihood and accuracy, each text's log-likelihood and perplexity,
    each greedy continuation: as moejax.evaluation computes them on the same requests."""
    export_dir, model = export
    results, samples = _run(export_dir, tmp_path / "out")
    tokenizer = load_tokenizer("bytes")
    docs = [json.loads(line) for line in (TASK_DIR / "toy.jsonl").read_text().splitlines()]

    # multiple choice: lm-eval's (context, " choice") requests and their scores
    requests = [(f"Question: {d['question']}\nAnswer:", f" {c}") for d in docs
                for c in d["choices"]]
    logged = [(args["arg_0"], args["arg_1"], float(resp[0][0]))
              for row in samples["moejax_toy_mc"]
              for args, resp in zip(row["arguments"].values(), row["resps"], strict=True)]
    assert [(c, x) for c, x, _ in logged] == requests
    want = loglikelihood(model, tokenizer, requests, batch_size=BATCH, max_length=MAX_LENGTH)
    np.testing.assert_allclose([lp for _, _, lp in logged], [s.logprob for s in want],
                               rtol=1e-6)
    for (context, continuation, logprob) in logged[:3]:  # the first question, in float64
        assert logprob == pytest.approx(_numpy_logprob(model, context, continuation),
                                        rel=1e-4)
    starts = np.cumsum([0] + [len(d["choices"]) for d in docs])
    picked = [int(np.argmax([s.logprob for s in want[a:b]])) for a, b in zip(starts, starts[1:])]
    accuracy = np.mean([p == d["answer"] for p, d in zip(picked, docs, strict=True)])
    assert results["results"]["moejax_toy_mc"]["acc,none"] == pytest.approx(accuracy)

    # perplexity: each text's rolling log-likelihood (windows of MAX_LENGTH), bits per byte
    texts = [d["text"] for d in docs]
    rolling = loglikelihood_rolling(model, tokenizer, texts, window=MAX_LENGTH,
                                    batch_size=BATCH)
    logged = [float(row["resps"][0][0]) for row in samples["moejax_toy_rolling"]]
    np.testing.assert_allclose(logged, [s.logprob for s in rolling], rtol=1e-6)
    bits = -sum(s.logprob for s in rolling) / sum(len(t.encode()) for t in texts) / math.log(2)
    assert results["results"]["moejax_toy_rolling"]["bits_per_byte,none"] == pytest.approx(bits)

    # generation: greedy, 6 new tokens, cut at the first newline
    want = generate_until(model, tokenizer, [d["prompt"] for d in docs], stop=["\n"],
                          max_new_tokens=6, batch_size=BATCH, max_length=MAX_LENGTH)
    assert [row["resps"][0][0] for row in samples["moejax_toy_generate"]] == want
    exact = np.mean([w == d["target"] for w, d in zip(want, docs, strict=True)])
    assert results["results"]["moejax_toy_generate"]["exact_match,none"] == exact


def test_answers_come_in_request_order_and_reach_the_cache_hook(export):
    """loglikelihood answers in the order asked (not the longest-first order they run in),
    each given to lm-eval's cache hook under its request; the options land."""
    from moejax.evaluation.lm_eval import MoejaxLM

    export_dir, model = export
    lm = MoejaxLM.create_from_arg_string(
        f"export={export_dir},batch_size={BATCH},max_length={MAX_LENGTH}",
        {"batch_size": 1, "device": None})  # what lm-eval adds by default
    assert (lm.batch_size, lm.max_length, lm.max_gen_toks) == (BATCH, MAX_LENGTH, 256)
    assert (lm.eot_token_id, lm.prefix_token_id, lm.tok_decode(lm.tok_encode("hé"))) == (
        258, 258, "hé")
    cached = []
    lm.set_cache_hook(types.SimpleNamespace(add_partial=lambda *entry: cached.append(entry)))
    # 34 to 49 tokens each: the shapes the first test compiled
    asked = [("a" * 40, " b"), ("a much longer context, " * 2, " c"), ("", "x" * 35),
             ("ctx " * 9, "y")]
    answers = lm.loglikelihood([types.SimpleNamespace(args=pair) for pair in asked])
    want = loglikelihood(model, load_tokenizer("bytes"), asked, batch_size=BATCH,
                         max_length=MAX_LENGTH)
    assert answers == [(s.logprob, s.is_greedy) for s in want]
    assert sorted(cached) == sorted(("loglikelihood", pair, answer)
                                    for pair, answer in zip(asked, answers, strict=True))
    assert lm._gen_options({"until": "\n\n", "temperature": 0.7, "max_new_tokens": 3}) == {
        "stop": ["\n\n"], "max_new_tokens": 3, "temperature": 0.7, "top_p": 1.0}
    assert lm._gen_options({"do_sample": False, "temperature": 0.7})["temperature"] == 0.0


@pytest.mark.parametrize("model_args, message", [
    ("", "give exactly one of export=DIR, workdir=DIR, hf=DIR; got none"),
    ("export={ex},hf={ex}", "give exactly one of export=DIR, workdir=DIR, hf=DIR; got export, hf"),
    ("hf={ex}", "hf={ex}: not a Hugging Face directory"),
    ("workdir={ex}", "workdir={ex}: not a training workdir"),
    ("export={ex}/nowhere", "export={ex}/nowhere: no such directory"),
    ("export={ex},batch_size=0", "batch_size=0; allowed: an integer >= 1"),
    ("export={ex},batch_size=auto", "batch_size='auto'; allowed: an integer >= 1"),
    ("export={ex},dtype=bfloat16", "unknown option(s) dtype; allowed: export,"),
    ("export={ex},tokenizer={ex}", "no tokenizer.json there"),
])
def test_model_args_errors_name_the_option(export, model_args, message):
    from moejax.evaluation.lm_eval import MoejaxLM

    export_dir, _ = export
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        MoejaxLM.create_from_arg_string(model_args.format(ex=export_dir))
    assert message.format(ex=export_dir) in str(error.value)
    assert "\n" not in str(error.value)


def test_unsupported_generation_options_are_named(export):
    from moejax.evaluation.lm_eval import MoejaxLM

    lm = MoejaxLM(export=str(export[0]))
    with pytest.raises(ValueError, match="gen_kwargs: moejax does not support num_beams"):
        lm._gen_options({"until": ["\n"], "num_beams": 4})


def test_the_command_reports_a_bad_model_in_one_line(offline, tmp_path, capsys):
    """A model error is one line naming the option, exit status 1; lm-eval's own usage
    errors keep its exit status 2."""
    argv = ["moejax-lm-eval", "--model", "moejax", "--model_args", f"export={tmp_path}/none",
            "--tasks", "moejax_toy_mc", "--include_path", str(TASK_DIR)]
    assert cli.main(argv) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"moejax-lm-eval: model_args export={tmp_path}/none: no such directory")
    assert cli.main(["moejax-lm-eval", "run", "--no_such_option", "1"]) == 2
