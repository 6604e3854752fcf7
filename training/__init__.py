"""Train state and optimizer, loss and train step, held-out loss, EMA, checkpoints, sharding, metric writers."""
