"""moejax-sample: continue a prompt with a trained, exported or imported model.

  moejax-sample (--export DIR | --workdir DIR) (--prompt TEXT | --prompt_ids 1,2,3)
                [--max_new_tokens 64] [--temperature 0] [--top_p 1] [--seed 0]

Prints the new text (byte-level models: vocabulary 259, as the built-in corpus trains) and
the token ids, prompt first. `--prompt` needs the byte-level vocabulary; a model imported
from Hugging Face takes `--prompt_ids` from its own tokenizer. See `moejax.generate`.
"""

from __future__ import annotations

import sys

import numpy as np
from absl import flags

from moejax.cli._command import run_command
from moejax.data.tokenizer import VOCAB_SIZE, decode, encode
from moejax.models.generate import generate
from moejax.models.weights import load_decoder

USAGE = ("moejax-sample (--export DIR | --workdir DIR) (--prompt TEXT | --prompt_ids 1,2,3) "
         "[--max_new_tokens N] [--temperature T] [--top_p P] [--seed S]")
FLAGS = flags.FlagValues()
flags.DEFINE_string("export", None, "A moejax export directory (moejax-export, moejax-hf "
                    "import).", flag_values=FLAGS)
flags.DEFINE_string("workdir", None, "A training workdir: its newest readable checkpoint.",
                    flag_values=FLAGS)
flags.DEFINE_string("prompt", None, "Prompt text (byte-level models).", flag_values=FLAGS)
flags.DEFINE_list("prompt_ids", None, "Prompt token ids, comma-separated.", flag_values=FLAGS)
flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate.", flag_values=FLAGS)
flags.DEFINE_float("temperature", 0.0, "0: greedy; > 0: sample.", flag_values=FLAGS)
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass, in (0, 1].", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Sampling seed.", flag_values=FLAGS)
flags.mark_flags_as_mutual_exclusive(["export", "workdir"], required=True, flag_values=FLAGS)
flags.mark_flags_as_mutual_exclusive(["prompt", "prompt_ids"], required=True,
                                     flag_values=FLAGS)


def _sample(options: flags.FlagValues) -> int:
    try:
        model = load_decoder(options.export or options.workdir)
        if options.prompt is not None:
            if model.spec.vocab_size != VOCAB_SIZE:
                raise ValueError(f"--prompt needs a byte-level model (vocab_size={VOCAB_SIZE})"
                                 f", this one has {model.spec.vocab_size}: pass --prompt_ids")
            prompt = encode(options.prompt)
        else:
            prompt = np.asarray([int(i) for i in options.prompt_ids], np.int32)
        out = generate(model, prompt[None], options.max_new_tokens, options.temperature,
                       options.top_p, options.seed)
    except (FileNotFoundError, RuntimeError, ValueError) as error:
        print(f"moejax-sample: {error}", file=sys.stderr)
        return 1
    ids = np.asarray(out.tokens[0])
    if model.spec.vocab_size == VOCAB_SIZE:
        print(decode(ids[len(prompt):]))
    print("ids:", ",".join(map(str, ids)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the sampler for `argv` (program name first); returns the exit status."""
    return run_command("moejax-sample", USAGE, FLAGS, _sample, argv)


def run():
    """Console-script entry point."""
    sys.exit(main())
