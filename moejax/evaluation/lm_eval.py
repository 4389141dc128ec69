"""lm-evaluation-harness's `moejax` model: any moejax model evaluated by lm-eval (>= 0.4.13).

    moejax-lm-eval --model moejax --model_args export=DIR --tasks arc_easy,hellaswag

Importing this module registers the class with lm-eval (`register_model("moejax")`);
`moejax-lm-eval` (`moejax/cli/lm_eval.py`) is lm-eval's own command line with it registered.
lm-eval is imported here only: `import moejax` and `moejax.evaluation` never load it.

model_args (`key=value,key=value`):

    export=DIR | workdir=DIR | hf=DIR   the model, exactly one: a moejax export, a training
                                        workdir (its newest readable step) or a Hugging Face
                                        directory (`moejax.models.weights.load_decoder`)
    tokenizer=PATH|bytes                instead of the one that travels with the weights
                                        (`moejax.evaluation.model_tokenizer`)
    batch_size=N                        rows per forward pass; wins over --batch_size (whose
                                        default, 1, lm-eval always passes)
    max_length=N                        the most tokens the model reads; default its context
                                        length (`moejax.evaluation.context_length`), else
                                        MAX_POSITIONS (32768)
    max_gen_toks=N                      generate_until's default new tokens (256)
    seed=N                              sampling seed (do_sample / temperature > 0)

The three request types are moejax.evaluation's text-level functions, so lm-eval and
moejax's own API give the same numbers: `loglikelihood` tokenizes with `encode_pair` (lm-eval's
`_encode_pair`; an empty context is the prefix token, `prefix_token_id`: BOS of a Hugging
Face tokenizer that names one, else EOS) and scores with `score_continuations`;
`loglikelihood_rolling` scores every token once after the prefix token with disjoint windows
of max_length tokens (lm-eval's `get_rolling_token_windows(..., context_len=1)`);
`generate_until` runs the KV cache (`moejax.models.generate`) for `max_gen_toks` tokens
(`max_new_tokens` / `max_tokens` too), greedy unless `do_sample` (set by lm-eval for a
temperature > 0) asks to sample at `temperature` (1 when not given, as Hugging Face's
`generate`) with `top_p`, and cuts the text before EOS and at the first `until` string.
Other generation options are an error naming them (`top_k` 0 or None is no option).
`--apply_chat_template` renders with the tokenizer's chat template (`moejax.data.chat`).

Requests are answered in lm-eval's order. They run longest first (loglikelihood by tokens,
rolling texts by characters, generation by prompt tokens within each distinct gen_kwargs) in
blocks of BLOCK_BATCHES batches; each block's answers go to lm-eval's cache hook as they
come (`--use_cache` keeps what a stopped run finished), and block k samples with seed + k.
"""

from __future__ import annotations

import copy
import json
import logging
import pathlib
from collections.abc import Callable, Iterator, Sequence

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs
from tqdm import tqdm

from moejax.data.chat import load_chat_template
from moejax.evaluation import (
    context_length,
    encode_pair,
    generate_until,
    loglikelihood_rolling,
    model_tokenizer,
    prefix_token_id,
    score_continuations,
)
from moejax.models.generate import MAX_POSITIONS
from moejax.models.weights import is_export, load_decoder
from moejax.options import check_int

SOURCES = ("export", "workdir", "hf")  # the model_args that name the model, one of them
IGNORED = ("device", "max_batch_size", "trust_remote_code")  # lm-eval's, meaningless here
BLOCK_BATCHES = 32  # batches per block: progress and cache writes happen per block
GEN_OPTIONS = ("until", "max_gen_toks", "do_sample", "temperature", "top_p")
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default

logger = logging.getLogger(__name__)


def _source(export, workdir, hf) -> pathlib.Path:
    """The path of the one model source given, checked to be of the kind its key names."""
    given = {key: value for key, value in zip(SOURCES, (export, workdir, hf), strict=True)
             if value is not None}
    if len(given) != 1:
        raise ValueError(f"model_args: give exactly one of export=DIR, workdir=DIR, hf=DIR; "
                         f"got {', '.join(given) or 'none'}")
    (key, value), = given.items()
    path = pathlib.Path(str(value)).expanduser()
    if not path.is_dir():
        raise ValueError(f"model_args {key}={value}: no such directory")
    hf_dir = (path / "config.json").is_file() and not is_export(path)
    if (key == "export") != is_export(path) or (key == "hf") != hf_dir:
        kinds = {"export": "a moejax export (params/, config.json)",
                 "workdir": "a training workdir (checkpoints/)",
                 "hf": "a Hugging Face directory (config.json, safetensors)"}
        raise ValueError(f"model_args {key}={value}: not {kinds[key]}")
    return path


def _positive(name: str, value) -> int:
    """`value` (an int, or a string of one) as a positive int, else a ValueError naming it."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    check_int(name, value)
    return value


def _blocks(lengths: Sequence[int], size: int) -> Iterator[list[int]]:
    """Indices of `lengths`, longest first, in blocks of `size`."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), size):
        yield order[start:start + size]


@register_model("moejax")
class MoejaxLM(TemplateLM):
    """A moejax Decoder and its tokenizer as an lm-eval model (module docstring)."""

    backend = "causal"

    def __init__(self, export=None, workdir=None, hf=None, tokenizer=None, batch_size=8,
                 max_length=None, max_gen_toks=DEFAULT_MAX_GEN_TOKS, seed=0, **others):
        super().__init__()
        unknown = sorted(set(others) - set(IGNORED))
        if unknown:
            raise ValueError(f"model_args: unknown option(s) {', '.join(unknown)}; allowed: "
                             "export, workdir, hf, tokenizer, batch_size, max_length, "
                             "max_gen_toks, seed")
        source = _source(export, workdir, hf)
        model = load_decoder(source)
        self._configure(model, model_tokenizer(source, model.spec.vocab_size,
                                               None if tokenizer is None else str(tokenizer)),
                        batch_size=batch_size, max_gen_toks=max_gen_toks, seed=seed,
                        max_length=(max_length if max_length is not None
                                    else context_length(source) or MAX_POSITIONS))
        logger.info("moejax model %s: tokenizer %s, max_length %d, batch_size %d", source,
                    self.tokenizer.name, self._max_length, self._batch_size)

    @classmethod
    def from_model(cls, model, tokenizer, *, batch_size=8, max_length=MAX_POSITIONS,
                   max_gen_toks=DEFAULT_MAX_GEN_TOKS, seed=0) -> MoejaxLM:
        """A live Decoder and its Tokenizer as an lm-eval model (the trainer's `lm_eval`
        evaluator), with the options of `__init__`."""
        lm = cls.__new__(cls)
        TemplateLM.__init__(lm)
        lm._configure(model, tokenizer, batch_size=batch_size, max_length=max_length,
                      max_gen_toks=max_gen_toks, seed=seed)
        return lm

    def _configure(self, model, tokenizer, *, batch_size, max_length, max_gen_toks, seed):
        self._batch_size = _positive("batch_size", batch_size)
        self._max_gen_toks = _positive("max_gen_toks", max_gen_toks)
        self._max_length = _positive("max_length", max_length)
        check_int("seed", seed, 0, 2**32 - 1)
        self._seed = seed
        self.model, self.tokenizer = model, tokenizer
        self._chat_template = None

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """The model of `arg_dict` (model_args); lm-eval's `additional_config` (batch_size,
        max_batch_size, device: --batch_size etc.) fills only what model_args does not set."""
        extra = {k: v for k, v in (additional_config or {}).items()
                 if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """As `create_from_arg_obj`, from `key=value,key=value`."""
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    # --- what lm-eval reads of a model ---------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        """The tokenizer's end-of-text id."""
        return int(self.tokenizer.eos_id)

    @property
    def prefix_token_id(self) -> int:
        """The token an empty context is (moejax.evaluation.prefix_token_id)."""
        return prefix_token_id(self.tokenizer)

    @property
    def max_length(self) -> int:
        """The most tokens the model reads."""
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        """New tokens when a request's gen_kwargs set none."""
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        """Rows per forward pass."""
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        """Names the tokenizer in lm-eval's request cache keys."""
        return f"moejax-{self.tokenizer.fingerprint}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   **kwargs) -> list[int]:
        """The ids of `string` (the model's tokenizer adds no special token)."""
        return self.tokenizer.encode(string).tolist()

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        """The text of ids (special tokens dropped)."""
        return self.tokenizer.decode(list(tokens))

    # --- chat templates (--apply_chat_template) ------------------------------------------

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The tokenizer's chat template text (None when not asked for)."""
        if chat_template is False or chat_template is None:
            return None
        return self._template().text

    def apply_chat_template(self, chat_history: list[dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        """`chat_history` rendered with the tokenizer's chat template (moejax.data.chat)."""
        return self._template().render(chat_history,
                                       add_generation_prompt=add_generation_prompt)

    def _template(self):
        """The tokenizer's ChatTemplate, read once (ValueError for a byte-level tokenizer)."""
        if self._chat_template is None:
            if self.tokenizer.directory is None:
                raise ValueError("--apply_chat_template: the model's tokenizer is byte-level "
                                 "and has no chat template")
            self._chat_template = load_chat_template(self.tokenizer.directory)
        return self._chat_template

    # --- requests ------------------------------------------------------------------------

    def _answer(self, kind: str, keys: list, lengths: list[int],
                run: Callable[[list[int], int], list], disable_tqdm: bool) -> list:
        """Runs `run(indices, block number)` on blocks of requests, longest first; gives
        each answer to the cache hook under (kind, its key) as it comes; returns the answers
        in request order."""
        answers = [None] * len(keys)
        size = self._batch_size * BLOCK_BATCHES
        with tqdm(total=len(keys), desc=f"moejax {kind}", disable=disable_tqdm) as bar:
            for number, block in enumerate(_blocks(lengths, size)):
                for index, answer in zip(block, run(block, number), strict=True):
                    answers[index] = answer
                    if keys[index] is not None:
                        self.cache_hook.add_partial(kind, keys[index], answer)
                bar.update(len(block))
        return answers

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(logprob, is_greedy) of each request's (context, continuation)."""
        rows = [(args, *encode_pair(self.tokenizer, *args))
                for args in (request.args for request in requests)]
        return self._loglikelihood_tokens(rows, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs
                              ) -> list[tuple[float, bool]]:
        """(logprob, is_greedy) of each (cache key, context ids, continuation ids)."""
        def run(block, _):
            scores = score_continuations(
                self.model, [requests[i][1] for i in block], [requests[i][2] for i in block],
                batch_size=self._batch_size, max_length=self._max_length)
            return [(score.logprob, score.is_greedy) for score in scores]

        lengths = [len(context) + len(continuation) for _, context, continuation in requests]
        return self._answer("loglikelihood", [key for key, _, _ in requests], lengths, run,
                            disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood of each request's whole text (every token once)."""
        texts = [request.args[0] for request in requests]

        def run(block, _):
            scores = loglikelihood_rolling(self.model, self.tokenizer,
                                           [texts[i] for i in block], window=self._max_length,
                                           batch_size=self._batch_size)
            return [score.logprob for score in scores]

        return self._answer("loglikelihood_rolling", [(text,) for text in texts],
                            [len(text) for text in texts], run, disable_tqdm)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """The continuation of each request's context under its gen_kwargs."""
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            key = json.dumps(request.args[1], sort_keys=True, default=str)
            groups.setdefault(key, []).append(index)
        texts = [None] * len(requests)
        for members in groups.values():
            chosen = [requests[i] for i in members]
            for index, text in zip(members, self._generate(chosen, disable_tqdm), strict=True):
                texts[index] = text
        return texts

    def _generate(self, requests, disable_tqdm: bool) -> list[str]:
        """generate_until for requests that share one gen_kwargs."""
        options = self._gen_options(requests[0].args[1])
        contexts = [request.args[0] for request in requests]

        def run(block, number):
            return generate_until(self.model, self.tokenizer, [contexts[i] for i in block],
                                  seed=(self._seed + number) % 2**32,
                                  batch_size=self._batch_size, max_length=self._max_length,
                                  **options)

        lengths = [len(self.tokenizer.encode(context)) for context in contexts]
        keys = [(request.args[0], request.args[1]) for request in requests]
        return self._answer("generate_until", keys, lengths, run, disable_tqdm)

    def _gen_options(self, gen_kwargs: dict) -> dict:
        """generate_until's keyword arguments for lm-eval's gen_kwargs (normalized as
        lm-eval's own models do: do_sample=False is greedy)."""
        if not isinstance(gen_kwargs, dict):
            raise ValueError(f"gen_kwargs={gen_kwargs!r}; allowed: a dict")
        kwargs = dict(normalize_gen_kwargs(copy.deepcopy(gen_kwargs), self._max_gen_toks))
        unknown = sorted(k for k, v in kwargs.items()
                         if k not in GEN_OPTIONS and not (k == "top_k" and not v))
        if unknown:
            raise ValueError(f"gen_kwargs: moejax does not support {', '.join(unknown)}; "
                             f"allowed: {', '.join(GEN_OPTIONS)}")
        until = kwargs.get("until") or []
        return {"stop": [until] if isinstance(until, str) else list(until),
                "max_new_tokens": _positive("max_gen_toks", kwargs["max_gen_toks"]),
                "temperature": _temperature(kwargs),
                "top_p": float(kwargs.get("top_p", 1.0))}


def _temperature(kwargs: dict) -> float:
    """0 (greedy) unless do_sample; then `temperature`, 1 when not given (as Hugging Face's
    generate), 0 when given as 0 (lm-eval warns about do_sample=True with temperature 0)."""
    return float(kwargs.get("temperature", 1.0)) if kwargs.get("do_sample") else 0.0
