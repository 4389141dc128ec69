"""Reporting: the metrics file (`metrics.py`: the metric names, their reductions and axes, one
writer, the readers), the trackers that writer also feeds (`writers.py`: TensorBoard, W&B,
MLflow), plots (`plots.py`: loss, training and suite views and the shared drawing helpers;
`routing_plots.py`: the routing views) and the run report (`report.py`)."""
