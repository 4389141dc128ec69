"""Experiments: suites of matched variants (`suites.py`), the runner and its reports
(`runner.py`), statistics and verdicts (`stats.py`)."""
