"""moejax-prepare: `moejax-prepare --config NAME[:arg] --out DIR [--config.a.b=value]`.

Tokenizes the text corpus of `config.data` with `config.data.tokenizer` ("bytes", or a Hugging
Face tokenizer.json or a directory holding one; override it like any option:
`--config.data.tokenizer=PATH`) into ArrayRecord shards (`moejax.data.shards`), in `--workers`
processes (default: one per CPU for a subword tokenizer; bytes, and 0: in this process), and
prints one line per split (documents, tokens, bytes, bytes/token). Train on them with
`--config.data.corpus=arrayrecord --config.data.paths=DIR`.

--out appears whole or not at all (`moejax.atomic`): a failure leaves the old prepared corpus
(with `--overwrite`, replaced only once the new one is complete) or nothing.

Exit status: 0 written; 1 nothing written (one line): another moejax-prepare is writing --out
(its PID named), a full disk or another write error, a tokenizer process died; 2 a bad flag
or option, an unreadable corpus or tokenizer, a data error (a line that is not UTF-8 or not
JSON: the file and line named), or an existing index without `--overwrite` (one line
naming it).
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from moejax.atomic import WriteError
from moejax.cli._command import run_command
from moejax.data.corpus import data_spec_from_config
from moejax.data.shards import INDEX_FILE, prepare

USAGE = ("moejax-prepare --config NAME|FILE.py[:arg] --out DIR [--config.data.tokenizer=PATH] "
         "[--workers N] [--overwrite]")
FLAGS = flags.FlagValues()
config_flags.DEFINE_config_file("config", None, "A shipped config NAME (default, tiny, ...) "
                                "or a config FILE.py, either with [:arg].",
                                flag_values=FLAGS)
flags.DEFINE_string("out", None, "Directory for the ArrayRecord shards and index.json.",
                    flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "Replace an existing prepared corpus.", flag_values=FLAGS)
flags.DEFINE_integer("workers", None, "Tokenizer processes (default: one per CPU for a "
                     "subword tokenizer; for bytes, and 0: in this process).", lower_bound=0,
                     flag_values=FLAGS)
flags.DEFINE_bool("progress", True, "Show a progress bar (only on a terminal).",
                  flag_values=FLAGS)
flags.mark_flags_as_required(["config", "out"], flag_values=FLAGS)


def summary(index: dict) -> list[str]:
    """The lines printed after a prepare: one per split, then the tokenizer and domains."""
    lines = []
    for split, entry in index["splits"].items():
        per_token = entry["bytes"] / entry["tokens"] if entry["tokens"] else 0.0
        lines.append(f"{split}: {entry['documents']} documents, {entry['tokens']} tokens, "
                     f"{entry['bytes']} bytes, {per_token:.2f} bytes/token -> "
                     f"{entry['records']}")
    tokenizer = index["tokenizer"]
    lines.append(f"tokenizer {tokenizer['name']} (fingerprint {tokenizer['fingerprint']}, "
                 f"vocab_size {index['vocab_size']}, eos_id {index['eos_id']}); "
                 f"{len(index['domain_names'])} domains")
    return lines


def main(options: flags.FlagValues) -> int:
    try:
        spec = data_spec_from_config(options.config.get("data"))
        index = prepare(spec, options.out, overwrite=options.overwrite, workers=options.workers,
                        progress=options.progress)
    except (WriteError, RuntimeError) as error:  # DirectoryBusyError, a worker that died
        print(f"moejax-prepare: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as error:  # FileNotFoundError, FileExistsError among them
        print(f"moejax-prepare: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print("\n".join(summary(index)))
    print(f"index: {options.out}/{INDEX_FILE}")
    return 0


def run():
    """Console-script entry point."""
    sys.exit(run_command("moejax-prepare", USAGE, FLAGS, main))


if __name__ == "__main__":
    run()
