"""Training: P×K sampling that is correct under DDP, the train module, checkpoints, the worker loop."""
