"""Training: config files, data, optimizer, train step, trainer and CLI.

Import submodules directly (`moejax.train.trainer`); this package imports nothing heavy.
"""
