"""Reporting: the metrics file (`metrics.py`, one writer and one reader), plots (`plots.py`)
and the run report (`report.py`)."""
