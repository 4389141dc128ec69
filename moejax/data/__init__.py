"""Data: the byte tokenizer (`tokenizer.py`), the text sources, one module each (`sources/`),
`DataSpec` with the chunking and train/validation split of a source's documents (`corpus.py`),
packing and the grain pipeline (`pipeline.py`), pre-tokenized ArrayRecord shards (`shards.py`).
Training-only: `import moejax` does not import this package."""
