"""moejax-upcycle: `moejax-upcycle --from DENSE_SOURCE --out EXPORT [--num_experts E]
[--top_k k] [--granularity m] [--drop_fraction p] [--seed s] [--block topk|deepseek]
[--num_shared_experts S] [--overwrite]`.

Turns a dense moejax model (an export, a training workdir or a Hugging Face directory whose
every layer is a dense SwiGLU FFN) into an MoE whose experts copy its FFNs, and writes a moejax
export (`moejax.models.upcycle.upcycle_export`). With --drop_fraction 0 the export computes the
dense model's function exactly at step 0 (docs/methods.md, "Upcycling"); continue training it
with `moejax-train --config configs/finetune_hf.py:EXPORT --workdir DIR`. E and k count
experts before fine-graining (E m experts of width F/m, k m chosen; MoESpec); unset, they are
the source config's `model.moe` values.

Exit status: 0 written; 1 nothing written (one line: an option the source does not allow, a
source that is not dense or not there, a non-empty --out, a full disk); 2 a bad flag.
"""

from __future__ import annotations

import pathlib
import sys

from absl import flags

from moejax.atomic import DirectoryBusyError, WriteError, quiet_while_writing
from moejax.cli._command import run_command
from moejax.data import tokenizer as data_tokenizer
from moejax.models import weights
from moejax.models.upcycle import BLOCKS, upcycle_export

USAGE = ("moejax-upcycle --from DENSE_SOURCE --out EXPORT [--num_experts E] [--top_k k] "
         "[--granularity m] [--drop_fraction p] [--seed s] [--block topk|deepseek] "
         "[--num_shared_experts S] [--overwrite]")
FLAGS = flags.FlagValues()
flags.DEFINE_string("from", None, "The dense model: a moejax export, a training workdir or a "
                    "Hugging Face directory.", flag_values=FLAGS)
flags.DEFINE_string("out", None, "Directory to write the MoE export to.", flag_values=FLAGS)
flags.DEFINE_integer("num_experts", None, "Experts E before fine-graining (default: the "
                     "source's model.moe.num_experts).", flag_values=FLAGS)
flags.DEFINE_integer("top_k", None, "Experts chosen per token k before fine-graining (default: "
                     "the source's model.moe.top_k).", flag_values=FLAGS)
flags.DEFINE_integer("granularity", 1, "m: each FFN is cut into m experts of width d_ff / m.",
                     flag_values=FLAGS)
flags.DEFINE_float("drop_fraction", 0.0, "Drop-upcycling: the share of each expert's hidden "
                   "units re-initialised (0: the dense function exactly).", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Seed of the routers and the dropped units.", flag_values=FLAGS)
flags.DEFINE_enum("block", "topk", BLOCKS, "MoE block: top-k, or DeepSeek (shared experts).",
                  flag_values=FLAGS)
flags.DEFINE_integer("num_shared_experts", None, "Shared experts S (block deepseek; each takes "
                     "one of the m slices).", flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "Replace a non-empty --out.", flag_values=FLAGS)
flags.mark_flags_as_required(["from", "out"], flag_values=FLAGS)


def moe_options(options: flags.FlagValues) -> dict:
    """The flags' `moe_spec_options` (`moejax.models.upcycle.upcycled_spec`): the set ones."""
    out = {"block": options.block}
    for name in ("num_experts", "top_k", "num_shared_experts"):
        if options[name].value is not None:
            out[name] = options[name].value
    return out


def tokenizer_files(source) -> list[pathlib.Path]:
    """The tokenizer's files of a model (`weights.tokenizer_dir`: none for a byte-level
    model), for the export to keep beside its config.json."""
    where = weights.tokenizer_dir(source)
    return [] if where is None else data_tokenizer.tokenizer_files(where)


def _upcycle(options: flags.FlagValues) -> int:
    source = options["from"].value
    try:
        with quiet_while_writing():  # a failed write: its one line below, not Orbax's logs
            out = upcycle_export(source, options.out, moe_options(options),
                                 granularity=options.granularity,
                                 drop_fraction=options.drop_fraction, seed=options.seed,
                                 files=tokenizer_files(source), overwrite=options.overwrite)
    except FileExistsError as error:
        print(f"moejax-upcycle: {error}" if options.overwrite else f"moejax-upcycle: --out "
              f"{options.out} is not empty; pass --overwrite to replace it", file=sys.stderr)
        return 1
    except (FileNotFoundError, RuntimeError, ValueError, DirectoryBusyError,
            WriteError) as error:
        print(f"moejax-upcycle: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    print(f"upcycled {source} to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the upcycle for `argv` (program name first); returns the exit status."""
    return run_command("moejax-upcycle", USAGE, FLAGS, _upcycle, argv)


def run():
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
