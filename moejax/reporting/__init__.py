"""Reporting: the metrics file (`metrics.py`: the metric names and their reductions, one writer,
the readers), plots (`plots.py`) and the run report (`report.py`)."""
