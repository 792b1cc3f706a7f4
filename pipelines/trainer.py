"""Launch one training run on Ray Train: the driver side shared by the train stage and tune trials.

Only ScalingConfig / RunConfig / TorchTrainer are built here; the training itself is
`components.training.loop.train_loop_per_worker`, which receives a typed `TrainJob`. Before any
worker starts, the driver checks what the workers would otherwise fail on after several
retries: P×K against the training classes (`fit_pk`), the loss's parameter values (by building
it once with the dataset's classes) and the cluster's resources.
"""

from __future__ import annotations

import os
import time
from typing import Any

from components import constants as C
from components.data.versions import open_version
from components.errors import ConfigError, ResourceError
from components.inference import BUNDLE_FILENAME
from components.storage import Store
from components.tracking import RunLogger, create_run
from components.training.config import LossSpec, TrackingSpec, TrainConfig, TrainJob
from pipelines.config import Config
from pipelines.ray_session import cluster_has_gpus
from pipelines.runs import PlannedRun


def absolute(uri: str) -> str:
    """Ray Train and Tune need an absolute `storage_path` ("URI has empty scheme" otherwise)."""
    return uri if "://" in uri else os.path.abspath(uri)


def start_run(planned: PlannedRun, tracking: str, experiment_id: str, parent_run_id: str | None,
              tags: dict[str, Any] | None = None) -> RunLogger:
    """Create the run's MLflow run (a child run when `parent_run_id` is given) and log its params."""
    run_id = create_run(tracking, experiment_id, planned.name, {**planned.tags, **(tags or {})}, parent_run_id)
    logger = RunLogger(tracking, run_id)
    logger.log_params({**planned.resolved, "run_name": planned.name})
    return logger


def check_loss_builds(config: Config, planned: PlannedRun) -> None:
    """Build the run's loss once on the driver with the dataset's classes, exactly as the
    workers will, so a bad parameter value is named before any worker starts (reading the
    config checks names only)."""
    from components.losses import build_loss
    from components.training.loop import loss_arguments, needs_superclasses, superclass_indices

    manifest = open_version(planned.dataset_uri).manifest
    classes = sorted(manifest["counts"][C.SPLIT_TRAIN])   # what the workers' training split holds
    superclasses = superclass_indices(manifest, classes) if needs_superclasses(planned.loss.name) else None
    arguments = loss_arguments(planned.loss.model_dump(), len(classes), config.model.embedding_dim, superclasses)
    try:
        build_loss(planned.loss.name, **arguments)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"loss {planned.loss.name!r} of run {planned.name!r}: {exc}") from None


def fit_batches(planned: PlannedRun) -> tuple[TrainConfig, str | None]:
    """P×K of the run checked against the training classes (`fit_pk`): the train settings to
    use (P lowered when it exceeds the classes) and what was adapted or is worth knowing."""
    from components.training.sampler import fit_pk

    train = planned.train
    counts = open_version(planned.dataset_uri).manifest["counts"][C.SPLIT_TRAIN]
    try:
        fit = fit_pk(counts, train.classes_per_batch, train.images_per_class, train.num_workers,
                     batches_per_epoch=train.batches_per_epoch)
    except ValueError as exc:
        raise ConfigError(f"run {planned.name!r}: {exc}") from None
    if fit.classes_per_batch != train.classes_per_batch:
        train = train.model_copy(update={"classes_per_batch": fit.classes_per_batch})
    return train, fit.message


def fit_run(planned: PlannedRun, logger: RunLogger, output_uri: str, storage_path: str, ray_name: str,
            callbacks: list | None = None, gpus_per_worker: float | None = None,
            keep_checkpoints: int | None = 2) -> dict[str, Any]:
    """Train with a TorchTrainer around `train_loop_per_worker`; returns the last metrics.
    The MLflow run ends FINISHED, or FAILED when training raises. `keep_checkpoints`: how many
    epoch checkpoints Ray Train keeps (None: all, for per-epoch evaluation)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from components.training.loop import train_loop_per_worker

    train = planned.train
    started = time.time()
    try:
        use_gpu = train.use_gpu if train.use_gpu is not None else cluster_has_gpus()
        check_resources(train, use_gpu, gpus_per_worker)
        resources = {"CPU": train.cpus_per_worker, **({"GPU": gpus_per_worker} if use_gpu and gpus_per_worker else {})}
        job = TrainJob(dataset=planned.dataset_uri, output_uri=output_uri, model=planned.resolved["model"],
                       loss=LossSpec(**planned.loss.model_dump()), train=train,
                       tracking=TrackingSpec(uri=logger.tracking_uri, run_id=logger.run_id))
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=job.to_dict(),
            scaling_config=ray.train.ScalingConfig(num_workers=train.num_workers, use_gpu=use_gpu,
                                                   resources_per_worker=resources),
            run_config=ray.train.RunConfig(
                name=ray_name, storage_path=absolute(storage_path), callbacks=callbacks or None,
                failure_config=ray.train.FailureConfig(max_failures=train.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints),
                # Per-report INFO lines from every worker drown the stage's own progress.
                logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            ),
        )
        result = trainer.fit()
    except Exception:
        logger.terminate("FAILED")
        raise
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    metrics["wall_seconds"] = time.time() - started
    logger.log_metrics({"train_seconds": metrics.get("train_seconds", 0.0), "epochs": metrics.get("epoch", 0),
                        "wall_seconds": metrics["wall_seconds"]})
    logger.terminate("FINISHED")
    if not Store(output_uri).exists(BUNDLE_FILENAME):
        raise RuntimeError(f"training {planned.name} finished without writing a model to {output_uri}")
    return metrics


def check_resources(train: TrainConfig, use_gpu: bool, gpus_per_worker: float | None = None) -> None:
    """Fail fast instead of waiting forever for workers the cluster cannot place."""
    import ray

    resources = ray.cluster_resources()
    if use_gpu and gpus_per_worker:
        need_gpu = train.num_workers * gpus_per_worker
        if resources.get("GPU", 0) < need_gpu:
            raise ResourceError(f"{train.num_workers} workers × {gpus_per_worker} GPU need {need_gpu} GPUs; "
                                f"the cluster has {resources.get('GPU', 0)}")
        use_gpu = False   # checked here; the check below assumes one GPU per worker
    need_cpu = train.num_workers * train.cpus_per_worker
    if resources.get("CPU", 0) < need_cpu:
        raise ResourceError(f"train.num_workers={train.num_workers} × cpus_per_worker={train.cpus_per_worker} needs "
                            f"{need_cpu} CPUs but the cluster has {resources.get('CPU', 0)}: lower train.num_workers "
                            "or train.cpus_per_worker, or add nodes")
    if use_gpu and resources.get("GPU", 0) < train.num_workers:
        raise ResourceError(f"train.use_gpu with {train.num_workers} workers needs {train.num_workers} GPUs; "
                            f"the cluster has {resources.get('GPU', 0)}")
