"""Training: specs (`TrainSpec`, config -> specs), optimizer, train/eval steps, checkpoints
and `train_and_evaluate`. Import submodules directly (`moejax.train.trainer`)."""
