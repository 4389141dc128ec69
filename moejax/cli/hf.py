"""moejax-hf: Hugging Face model directories in and out (Mixtral, Qwen3-MoE).

  moejax-hf import --hf DIR --out EXPORT [--overwrite]
  moejax-hf export --from EXPORT_OR_WORKDIR --out DIR [--dtype auto|float32|bfloat16]
                   [--max_shard_gb 5] [--overwrite]

`import` reads an HF directory (config.json, single or sharded safetensors, per-expert or
fused layout) into a moejax export (`moejax.models.weights` reads it; so does `export` back), one
tensor at a time and in the stored dtype (a bfloat16 checkpoint gives a bfloat16 export;
float16 and float64 tensors become float32; the export's `model.param_dtype` is "bfloat16"
when every tensor is, so the model loads at 2 bytes per parameter). The directory is
untrusted: a config value of the wrong type or out of range, a config that names more layers
or experts than the tensors hold, a tensor that is not a float or not finite, a file outside
the directory: each stops the import with one line naming it (`hf_config.py`, `hf_dir.py`,
`convert_hf.py`).
`export` writes config.json and safetensors in the hub's per-expert layout, which
`AutoModelForCausalLM.from_pretrained` loads; `--dtype auto` keeps the export's dtype (a
training workdir's float32). See `moejax/models/hf_dir.py`.

The tokenizer and the generation settings travel with the weights. `import` copies the
tokenizer's files (`TOKENIZER_FILES`) and generation_config.json into the export's root and
keeps what config.json says that moejax does not model (`hf_config.HF_KEPT`: the context length
and the special ids) under the export config's "hf" key. `export` writes them back: the
tokenizer's files (`weights.tokenizer_dir` of --from: the export's root, the workdir's
tokenizer/), config.json with the kept context length (else 32768) and special ids (a kept
id, else the tokenizer's; a byte-level moejax model's are 257, 258, 256), and the imported
generation_config.json, else one with those ids, so that `AutoTokenizer.from_pretrained`
loads the directory and `generate` stops at the end-of-text token.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import sys

import jax
from absl import flags

from moejax.atomic import DirectoryBusyError, WriteError, quiet_while_writing
from moejax.cli._command import HELP_ARGS, run_command
from moejax.data.tokenizer import (
    BYTES,
    TOKENIZER_FILES,
    VOCAB_SIZE,
    Tokenizer,
    load_tokenizer,
    save_tokenizer,
)
from moejax.models import hf_dir, weights
from moejax.models.convert_hf import from_hf, to_hf
from moejax.models.hf_config import KEPT
from moejax.models.hf_dir import GENERATION_CONFIG, read_hf_dir, write_hf_dir

USAGE = ("moejax-hf import --hf DIR --out EXPORT [--overwrite] | moejax-hf export --from "
         "EXPORT_OR_WORKDIR --out DIR [--dtype auto|float32|bfloat16] [--max_shard_gb N] "
         "[--overwrite]")
IMPORT = flags.FlagValues()
flags.DEFINE_string("hf", None, "Hugging Face model directory (config.json + safetensors).",
                    flag_values=IMPORT)
flags.DEFINE_string("out", None, "Export directory to write (params/ and config.json).",
                    flag_values=IMPORT)
flags.DEFINE_bool("overwrite", False, "Replace a non-empty --out.", flag_values=IMPORT)
flags.mark_flags_as_required(["hf", "out"], flag_values=IMPORT)

EXPORT = flags.FlagValues()
flags.DEFINE_string("from", None, "A moejax export directory or a training workdir (its "
                    "newest readable checkpoint).", flag_values=EXPORT)
flags.DEFINE_string("out", None, "Hugging Face directory to write.", flag_values=EXPORT)
flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"], "Stored tensor dtype "
                  "(auto: the export's own, float32 for a workdir).", flag_values=EXPORT)
flags.DEFINE_float("max_shard_gb", 5.0, "Largest safetensors shard in GiB (index above).",
                   flag_values=EXPORT)
flags.DEFINE_bool("overwrite", False, "Replace a non-empty --out.", flag_values=EXPORT)
flags.mark_flags_as_required(["from", "out"], flag_values=EXPORT)


def _refuse_non_empty(out: str, overwrite: bool) -> bool:
    path = pathlib.Path(out).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        print(f"moejax-hf: --out {out} is not empty; pass --overwrite to replace it",
              file=sys.stderr)
        return True
    return False


def _not_written(error: Exception) -> int:
    """One line for a write that left --out as it was (not empty, another writer busy, a
    full disk: `moejax.atomic`); returns 1."""
    print(f"moejax-hf: {' '.join(str(error).split())}", file=sys.stderr)
    return 1


def _to_host_device(tree: dict) -> dict:
    """Replaces each NumPy leaf by a CPU jax array in place, one at a time (Orbax copies a
    NumPy tree whole before writing it: a 705 MiB import peaked at 1,614 MiB this way,
    2,182 MiB without)."""
    for key, value in tree.items():
        tree[key] = (_to_host_device(value) if isinstance(value, dict)
                     else jax.device_put(value, jax.devices("cpu")[0]))
    return tree


def _import(options: flags.FlagValues) -> int:
    if _refuse_non_empty(options.out, options.overwrite):
        return 1
    source = pathlib.Path(options.hf).expanduser()
    try:  # the directory is untrusted: every check in hf_dir / convert_hf, one-line errors
        spec, tensors = read_hf_dir(source)
        params = _to_host_device(from_hf(tensors, spec, dtype=None))  # one by one, dtype kept
        files = [source / name for name in (*TOKENIZER_FILES, GENERATION_CONFIG)
                 if (source / name).is_file()]
        for file in files:  # copied under its own name, read where it leads (in the directory)
            hf_dir.inside(source, file.name, "HF file")
        model = dataclasses.replace(spec, param_dtype=weights.stored_param_dtype(params))
        config = {"model": dataclasses.asdict(model), KEPT: hf_dir.read_kept(source)}
    except (FileNotFoundError, ValueError) as error:
        print(f"moejax-hf: {error}", file=sys.stderr)
        return 1
    out = pathlib.Path(options.out).expanduser().resolve()
    try:
        with quiet_while_writing():  # a failed write: one line, not Orbax's logs
            weights.write_export(out, config, params, overwrite=options.overwrite, files=files)
    except (FileExistsError, DirectoryBusyError, WriteError, ValueError) as error:
        return _not_written(error)
    print(f"imported {options.hf} to {out}")
    return 0


def _tokenizer(source: str, vocab_size: int, imported: bool) -> Tokenizer | None:
    """The model's tokenizer; the byte-level one for a moejax model of the byte vocabulary
    without one; else None."""
    directory = weights.tokenizer_dir(source)
    if directory is not None:
        return load_tokenizer(directory)
    return load_tokenizer(BYTES) if vocab_size == VOCAB_SIZE and not imported else None


def _hf_settings(source: str, vocab_size: int) -> tuple[dict, dict | None, Tokenizer | None]:
    """--from -> (the `HF_KEPT` values to write, the generation config, the tokenizer)."""
    path = pathlib.Path(source).expanduser().resolve()
    config = weights.run_config(path)
    kept = hf_dir.read_kept(path) if config is None else dict(config.get(KEPT) or {})
    tokenizer = _tokenizer(source, vocab_size, imported=config is None or KEPT in config)
    if tokenizer is not None:
        ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
               "pad_token_id": tokenizer.pad_id}
        kept.update({key: value for key, value in ids.items() if kept.get(key) is None})
    if (path / GENERATION_CONFIG).is_file():  # an import's (or an HF directory's) own
        return kept, json.loads((path / GENERATION_CONFIG).read_text()), tokenizer
    generation = {key: kept[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")
                  if kept.get(key) is not None}
    return kept, generation or None, tokenizer


def _export(options: flags.FlagValues) -> int:
    if _refuse_non_empty(options.out, options.overwrite):
        return 1
    source = options["from"].value
    try:
        model = weights.load_decoder(source)
        tensors = to_hf(model)
        kept, generation, tokenizer = _hf_settings(source, model.spec.vocab_size)
        dtype = options.dtype
        if dtype == "auto":  # a workdir's (no export dtypes) and a mixed export's: float32
            stored = weights.exported_dtypes(source)
            dtype = "bfloat16" if stored == {"bfloat16"} else "float32"
    except (FileNotFoundError, RuntimeError, ValueError) as error:
        print(f"moejax-hf: {error}", file=sys.stderr)
        return 1
    # the tokenizer's files go into the directory before it is put in place
    extra = None if tokenizer is None else functools.partial(save_tokenizer, tokenizer)
    try:
        out = write_hf_dir(tensors, model.spec, options.out, dtype=dtype,
                           max_shard_bytes=int(options.max_shard_gb * 2**30), kept=kept,
                           generation=generation, overwrite=options.overwrite, extra=extra)
    except (FileExistsError, DirectoryBusyError, WriteError, ValueError) as error:
        return _not_written(error)
    print(f"exported {source} to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs `moejax-hf import|export` for `argv` (program name first); returns the status."""
    argv = list(sys.argv if argv is None else argv)
    commands = {"import": (IMPORT, _import), "export": (EXPORT, _export)}
    if len(argv) >= 2 and argv[1] in HELP_ARGS:  # the help of both commands
        helps = [f"moejax-hf {name}:\n{flag_values.get_help()}"
                 for name, (flag_values, _) in commands.items()]
        print("\n\n".join([f"usage: {USAGE}", *helps]))
        return 0
    if len(argv) < 2 or argv[1] not in commands:
        print(f"moejax-hf: the first argument must be 'import' or 'export'\nusage: {USAGE}",
              file=sys.stderr)
        return 2
    flag_values, command = commands[argv[1]]
    return run_command(f"moejax-hf {argv[1]}", USAGE, flag_values, command,
                       [f"{argv[0]} {argv[1]}", *argv[2:]])


def run():
    """Console-script entry point."""
    sys.exit(main())
