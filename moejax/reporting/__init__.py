"""Reporting: the metrics file (`metrics.py`: the metric names, their reductions and axes, one
writer, the readers), the trackers that writer also feeds (`writers.py`: TensorBoard, W&B,
MLflow), plots (`plots.py`) and the run report (`report.py`)."""
