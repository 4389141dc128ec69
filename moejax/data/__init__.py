"""Data: byte tokenizer and corpora (`corpus.py`), packing and the grain pipeline
(`pipeline.py`), pre-tokenized ArrayRecord shards (`shards.py`). Training-only: `import moejax`
does not import this package."""
