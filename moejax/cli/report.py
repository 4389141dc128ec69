"""moejax-report: `moejax-report --workdir DIR` turns DIR/metrics.jsonl into a run report.

Writes DIR/plots/*.png and DIR/report.md (`moejax.reporting.report.write_report`).
"""

from __future__ import annotations

import sys

from absl import flags

from moejax.cli._command import run_command
from moejax.reporting.report import write_report

USAGE = "moejax-report --workdir DIR"
FLAGS = flags.FlagValues()
flags.DEFINE_string("workdir", None, "Training run directory holding metrics.jsonl.",
                    flag_values=FLAGS)
flags.mark_flags_as_required(["workdir"], flag_values=FLAGS)


def main(options: flags.FlagValues) -> int:
    try:
        report = write_report(options.workdir)
    except (FileNotFoundError, ValueError) as err:
        print(f"moejax-report: {err}", file=sys.stderr)
        return 1
    print(report)
    return 0


def run():
    """Console-script entry point."""
    sys.exit(run_command("moejax-report", USAGE, FLAGS, main))


if __name__ == "__main__":
    run()
