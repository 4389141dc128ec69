"""Example data for README's "Train on your own data": a gzipped JSONL corpus and a tokenizer.

Writes OUT/docs.jsonl.gz (one record per docstring of 200 characters or more in the running
Python's standard library: {"text": the docstring, "package": its top-level package}) and
OUT/tokenizer/ (a byte-level BPE `tokenizer.json` trained on those texts with the `tokenizers`
library, `moejax.data.tokenizer.train_bpe`, and a tokenizer_config.json naming its end-of-text
token): the two things a user
brings. Usage: python docs/examples/make_example_data.py --out example [--vocab 4096]
"""

import argparse
import ast
import gzip
import json
import pathlib
import sysconfig

from moejax.data.tokenizer import train_bpe


def docstrings():
    """{"text", "package"} for every docstring of 200 characters or more (modules, classes,
    functions) of the standard library's sources, tests left out."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] in ("test", "site-packages", "idlelib") or "tests" in relative.parts:
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node)
                if text and len(text) >= 200:
                    yield {"text": text, "package": relative.parts[0].removesuffix(".py")}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--vocab", type=int, default=4096)
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = list(docstrings())
    with gzip.open(out / "docs.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    train_bpe([r["text"] for r in records], out / "tokenizer", args.vocab)
    print(f"{len(records)} records in {out / 'docs.jsonl.gz'}, a {args.vocab}-token BPE in "
          f"{out / 'tokenizer'}")


if __name__ == "__main__":
    main()
