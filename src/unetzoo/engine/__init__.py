"""Training loop, evaluation, volume and sliding-window inference, checkpoints."""
