"""moejax-prepare: `moejax-prepare --config configs/NAME.py[:arg] --out DIR [--overwrite]`.

Tokenizes the text corpus of `config.data` into ArrayRecord shards (see moejax.train.records);
train on them with `--config.data.corpus=arrayrecord --config.data.paths=DIR`.
The flags are defined when `run()` starts, not at import, so that this module and
moejax.train.main (which also defines --config) can be imported in one process.
"""

from __future__ import annotations

import functools

from absl import app, flags
from ml_collections import config_flags


def _define_flags():
    config = config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py).")
    out = flags.DEFINE_string("out", None, "Directory for the ArrayRecord shards and index.json.")
    overwrite = flags.DEFINE_bool("overwrite", False, "Replace an existing prepared corpus.")
    flags.mark_flags_as_required(["config", "out"])
    return config, out, overwrite


def _main(argv, *, config, out, overwrite):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from moejax.train.corpus import data_spec_from_config
    from moejax.train.records import prepare

    spec = data_spec_from_config(config.value.get("data"))
    index = prepare(spec, out.value, overwrite=overwrite.value)
    for split, entry in index["splits"].items():
        print(f"{split}: {entry['documents']} documents, {entry['tokens']} tokens -> "
              f"{entry['records']}")
    print(f"{len(index['domain_names'])} domains; index: {out.value}/index.json")


def run():
    """Console-script entry point."""
    config, out, overwrite = _define_flags()
    app.run(functools.partial(_main, config=config, out=out, overwrite=overwrite))


if __name__ == "__main__":
    run()
