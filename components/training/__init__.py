"""Training: the per-worker loop (`loop.train`, `loop.train_loop_per_worker`), its typed
settings (`config.TrainConfig`, `config.TrainJob`), the streaming P×K input (`data`), the
train module (model + loss under DDP, AMP for the network only), optimisers, checkpoints,
synchronised BatchNorm and the batch samplers.

May import: components.constants, storage, data, models, losses, evaluation (metrics only),
inference (bundles, validation embedding) and tracking (rank 0's MLflow logger, lazily).
Nothing outside this package imports training except the pipelines; Ray is imported only by
`loop.RayReporter`, so the loop also runs in a process without Ray.
"""
