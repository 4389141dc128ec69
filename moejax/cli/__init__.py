"""Commands: one module per console script (`moejax-train`, `-export`, `-report`, `-prepare`,
`-experiment`), each a thin `main` over the library; flags are defined one way
(`_command.py`). Nothing imports `moejax.cli`."""
