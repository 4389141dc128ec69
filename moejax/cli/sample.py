"""moejax-sample: continue a prompt with a trained, exported or imported model.

  moejax-sample (--export DIR | --workdir DIR) (--prompt TEXT | --prompt_ids 1,2,3)
                [--max_new_tokens 64] [--temperature 0] [--top_p 1] [--seed 0]

Prints the new text and the token ids, prompt first. The text is encoded and decoded with the
model's tokenizer (`moejax.models.weights.tokenizer_dir`: an export's root, a workdir's
tokenizer/, or the path its config's data.tokenizer names), else byte by byte when the
model has the byte-level vocabulary (259, as the built-in corpus trains); a model with
neither takes `--prompt_ids` and prints only the ids. Generation runs `--max_new_tokens`
steps (it does not stop at the end-of-text token); ids the tokenizer does not have (a
vocabulary padded beyond it) decode to nothing. See `moejax.generate`.

Checked before generation, each a one-line error with exit status 1: the prompt's ids lie in
[0, vocab_size); the prompt plus --max_new_tokens fits the model's context length (its kept
Hugging Face `max_position_embeddings`, else 32768, `generate.MAX_POSITIONS`) and the KV
cache fits the device's memory; --temperature is 0 or a finite number >= 1e-4
(`generate.MIN_TEMPERATURE`); --top_p is in (0, 1]; --seed in [0, 2**32 - 1]. The text is
printed with control characters other than newline and tab escaped (`\\x00`, `\\x1b`), so
a model's output cannot drive the terminal.
"""

from __future__ import annotations

import sys
import unicodedata

import numpy as np
from absl import flags

from moejax.cli._command import run_command
from moejax.data.tokenizer import BYTES, VOCAB_SIZE, Tokenizer, load_tokenizer
from moejax.models.generate import generate
from moejax.models.weights import hf_record, load_decoder, tokenizer_dir

USAGE = ("moejax-sample (--export DIR | --workdir DIR) (--prompt TEXT | --prompt_ids 1,2,3) "
         "[--max_new_tokens N] [--temperature T] [--top_p P] [--seed S]")
FLAGS = flags.FlagValues()
flags.DEFINE_string("export", None, "A moejax export directory (moejax-export, moejax-hf "
                    "import).", flag_values=FLAGS)
flags.DEFINE_string("workdir", None, "A training workdir: its newest readable checkpoint.",
                    flag_values=FLAGS)
flags.DEFINE_string("prompt", None, "Prompt text, encoded with the model's tokenizer (or "
                    "bytes, for a byte-level model).", flag_values=FLAGS)
flags.DEFINE_list("prompt_ids", None, "Prompt token ids, comma-separated.", flag_values=FLAGS)
flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate.", flag_values=FLAGS)
flags.DEFINE_float("temperature", 0.0, "0: greedy; > 0: sample.", flag_values=FLAGS)
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass, in (0, 1].", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Sampling seed.", flag_values=FLAGS)
flags.mark_flags_as_mutual_exclusive(["export", "workdir"], required=True, flag_values=FLAGS)
flags.mark_flags_as_mutual_exclusive(["prompt", "prompt_ids"], required=True,
                                     flag_values=FLAGS)


def _tokenizer(source: str, vocab_size: int, needed: bool) -> Tokenizer | None:
    """The model's tokenizer, the byte-level one for the byte vocabulary, else None.

    A tokenizer the config names but that cannot be found is an error only when `needed`
    (--prompt); with --prompt_ids the ids are printed without text."""
    try:
        directory = tokenizer_dir(source)
    except FileNotFoundError:
        if needed:
            raise
        return None
    if directory is not None:
        return load_tokenizer(directory)
    return load_tokenizer(BYTES) if vocab_size == VOCAB_SIZE else None


def _encode(tokenizer: Tokenizer | None, text: str, vocab_size: int) -> np.ndarray:
    """int32 [N] ids of the --prompt text."""
    if tokenizer is None:
        raise ValueError(f"--prompt needs a byte-level model (vocab_size={VOCAB_SIZE}) or a "
                         f"tokenizer; this one has vocab_size={vocab_size} and no tokenizer: "
                         "pass --prompt_ids")
    ids = tokenizer.encode(text)
    if ids.size and ids.max() >= vocab_size:
        raise ValueError(f"--prompt gives token id {ids.max()}, beyond the model's "
                         f"vocab_size={vocab_size} (tokenizer {tokenizer.name})")
    return ids


def _prompt_ids(items: list[str], vocab_size: int) -> np.ndarray:
    """int32 [N] ids of --prompt_ids, each checked before the cast (which would wrap)."""
    ids = []
    for item in items:
        value = int(item) if item.strip().lstrip("+-").isdigit() else None
        if value is None or not 0 <= value < vocab_size:
            raise ValueError(f"--prompt_ids: {item!r} is not a token id of this model; "
                             f"allowed: integers in [0, {vocab_size - 1}] (model.vocab_size="
                             f"{vocab_size})")
        ids.append(value)
    return np.asarray(ids, np.int32)


def _printable(text: str) -> str:
    """`text` with every control character but newline and tab (and any lone surrogate)
    escaped as Python writes it in a string literal (NUL -> \\x00, ESC -> \\x1b)."""
    return "".join(
        char if char in "\n\t" or unicodedata.category(char) not in ("Cc", "Cs")
        else repr(char)[1:-1] for char in text)


def _sample(options: flags.FlagValues) -> int:
    source = options.export or options.workdir
    try:
        model = load_decoder(source)
        vocab_size = model.spec.vocab_size
        tokenizer = _tokenizer(source, vocab_size, needed=options.prompt is not None)
        if options.prompt is not None:
            prompt = _encode(tokenizer, options.prompt, vocab_size)
        else:
            prompt = _prompt_ids(options.prompt_ids, vocab_size)
        positions = (hf_record(source) or {}).get("max_position_embeddings")
        out = generate(model, prompt[None], options.max_new_tokens, options.temperature,
                       options.top_p, options.seed, max_positions=positions)
    except (FileNotFoundError, RuntimeError, ValueError) as error:
        print(f"moejax-sample: {error}", file=sys.stderr)
        return 1
    ids = np.asarray(out.tokens[0])
    if tokenizer is not None:
        new = ids[len(prompt):]
        print(_printable(tokenizer.decode(new[new < tokenizer.vocab_size])))
    print("ids:", ",".join(map(str, ids)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the sampler for `argv` (program name first); returns the exit status."""
    return run_command("moejax-sample", USAGE, FLAGS, _sample, argv)


def run():
    """Console-script entry point."""
    sys.exit(main())
