"""Experiments: suites of matched variants (`suites.py`), the runner (`runner.py`), the suite
reports (`suite_report.py`), the summary over the suites (`summary.py`), statistics and verdicts
(`stats.py`)."""
