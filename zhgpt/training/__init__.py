"""Stage 4: the training loop and what it needs (optimizers, batches, checkpoints, run folders,
distributed set-up, metric loggers, validation bits/char, cost estimates)."""
