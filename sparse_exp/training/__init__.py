"""What a train step is built from: optimizers, LR schedules and evaluation metrics."""
