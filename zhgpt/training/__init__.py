"""Stage 4: the training loop and what it needs (optimizers, batches, checkpoints, run folders,
distributed set-up, metric loggers, validation bits/char, cost estimates).

`train` is the stage's entry point; it runs `setup` (run folder, data, model, optimizers, resume),
then `loop` (evaluate + sample, save, `step.train_step`, log, finish)."""
