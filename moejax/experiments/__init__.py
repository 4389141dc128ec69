"""Experiments: suites of matched variants (`suites.py`), the runner (`runner.py`), the suite
reports and summary (`suite_report.py`), statistics and verdicts (`stats.py`)."""
