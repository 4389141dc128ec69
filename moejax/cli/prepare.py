"""moejax-prepare: `moejax-prepare --config configs/NAME.py[:arg] --out DIR [--overwrite]`.

Tokenizes the text corpus of `config.data` into ArrayRecord shards (`moejax.data.shards`);
train on them with `--config.data.corpus=arrayrecord --config.data.paths=DIR`.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from moejax.cli._command import run_command
from moejax.data.corpus import data_spec_from_config
from moejax.data.shards import prepare

USAGE = "moejax-prepare --config configs/NAME.py[:arg] --out DIR [--overwrite]"
FLAGS = flags.FlagValues()
config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py).",
                                flag_values=FLAGS)
flags.DEFINE_string("out", None, "Directory for the ArrayRecord shards and index.json.",
                    flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "Replace an existing prepared corpus.", flag_values=FLAGS)
flags.mark_flags_as_required(["config", "out"], flag_values=FLAGS)


def main(options: flags.FlagValues) -> int:
    spec = data_spec_from_config(options.config.get("data"))
    index = prepare(spec, options.out, overwrite=options.overwrite)
    for split, entry in index["splits"].items():
        print(f"{split}: {entry['documents']} documents, {entry['tokens']} tokens -> "
              f"{entry['records']}")
    print(f"{len(index['domain_names'])} domains; index: {options.out}/index.json")
    return 0


def run():
    """Console-script entry point."""
    sys.exit(run_command("moejax-prepare", USAGE, FLAGS, main))


if __name__ == "__main__":
    run()
