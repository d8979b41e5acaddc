"""The training loop and what it drives: the update, optimizer, checkpoints, callbacks, logs, torch.distributed."""
