"""moejax-train: `moejax-train --config configs/NAME.py --workdir DIR [--config.a.b=value]`."""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics and checkpoints.")
flags.mark_flags_as_required(["config", "workdir"])


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from moejax.train.trainer import train_and_evaluate

    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def run():
    """Console-script entry point."""
    app.run(_main)


if __name__ == "__main__":
    run()
