"""The train stage: one Ray Train run per configured loss, tracked in MLflow.

This driver only resolves inputs and builds ScalingConfig / RunConfig / TorchTrainer; the
training itself is `components.training.loop.train_loop_per_worker`. A run whose output for
the same config and dataset version already exists is skipped, so a pipeline resumes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from components import constants as C
from components.data.versions import latest_version, manifest_path, open_version
from components.storage import Store, sha256_json
from components.tracking import RunLogger, create_run, default_tracking_uri, ensure_experiment, prepare_store
from components.training.checkpoint import BUNDLE_FILENAME
from pipelines.config import Config, LossConfig, TrainConfig
from pipelines.ray_session import cluster_has_gpus, ensure_ray

RUNS_DIR = "runs"
RESULT_FILE = "result.json"


@dataclass
class TrainedRun:
    name: str
    loss: str
    model_uri: str            # folder holding the model bundle
    run_id: str               # MLflow run
    metrics: dict[str, Any]
    skipped: bool


def tracking_uri(config: Config) -> str:
    return config.tracking.uri or default_tracking_uri(config.storage.root)


def resolve_dataset(config: Config) -> str:
    """The manifest URI to train on: `train.dataset`, else the latest ingested version."""
    if config.train.dataset:
        return open_version(config.train.dataset).uri
    store = Store(config.storage.root)
    from components.data.sources import build_source

    dataset = build_source(config.data).dataset_name()
    version = latest_version(store, dataset)
    if version is None:
        raise FileNotFoundError(f"no ingested dataset {dataset!r} under {store.uri}: run `chipmatch ingest` first "
                                "(or set train.dataset to a manifest URI)")
    return store.uri_of(manifest_path(dataset, version))


def run_plan(config: Config) -> list[tuple[str, LossConfig, TrainConfig]]:
    """(name, loss, train settings) of every run, in order."""
    if not config.runs:
        return [(config.loss.name, config.loss, config.train)]
    plan = []
    for run in config.runs:
        loss = run.loss if isinstance(run.loss, LossConfig) else LossConfig(**run.loss)
        plan.append((run.name, loss, TrainConfig(**{**config.train.model_dump(), **run.overrides})))
    return plan


def run_location(config: Config, name: str, loss: LossConfig, train: TrainConfig, dataset_uri: str) -> tuple[dict, str, str]:
    """(resolved training config, run key, run folder under the storage root) of one run.

    The key hashes everything that determines the trained model, so the same run on the same
    dataset version always lands in the same folder (and is skipped when it is there).
    """
    version = open_version(dataset_uri)
    resolved = {"model": config.model.model_dump(), "loss": loss.model_dump(),
                "train": train.model_dump(exclude={"fail_at_epoch", "max_failures", "dataset"}), "dataset": dataset_uri}
    run_key = f"{name}-{sha256_json(resolved)[:12]}"
    return resolved, run_key, f"{RUNS_DIR}/{version.dataset}/{version.version}/{run_key}"


def trained_runs(config: Config, dataset_uri: str | None = None) -> list[TrainedRun]:
    """The runs of this config that have finished training (in plan order)."""
    dataset_uri = dataset_uri or resolve_dataset(config)
    store = Store(config.storage.root)
    runs, model_uris = [], {}
    for name, loss, train in run_plan(config):
        if train.init_from in model_uris:
            train = train.model_copy(update={"init_from": model_uris[train.init_from]})
        _, _, folder = run_location(config, name, loss, train, dataset_uri)
        if store.exists(f"{folder}/{RESULT_FILE}"):
            result = store.read_json(f"{folder}/{RESULT_FILE}")
            model_uris[name] = result["model_uri"]
            runs.append(TrainedRun(name, loss.name, result["model_uri"], result["run_id"], result["metrics"], skipped=True))
    return runs


def run_train(config: Config, console: Console, dataset_uri: str | None = None, parent_run_id: str | None = None) -> list[TrainedRun]:
    dataset_uri = dataset_uri or resolve_dataset(config)
    ensure_ray(config.ray)
    uri = tracking_uri(config)
    prepare_store(uri)
    store = Store(config.storage.root)
    experiment_id = ensure_experiment(uri, config.tracking.experiment, store.uri_of("mlartifacts"))
    done: dict[str, TrainedRun] = {}
    for name, loss, train in run_plan(config):
        if train.init_from in done:
            train = train.model_copy(update={"init_from": done[train.init_from].model_uri})
        done[name] = train_one(config, console, name, loss, train, dataset_uri, uri, experiment_id, parent_run_id)
    return list(done.values())


@dataclass
class PlannedRun:
    """One training run, resolved: what `train_one` and a tune trial both train."""

    name: str
    loss: LossConfig
    train: TrainConfig
    dataset_uri: str
    resolved: dict[str, Any]   # see run_location
    run_key: str
    folder: str                # where `train_one` puts it (a tune trial uses its sweep's folder)
    tags: dict[str, Any]


def plan_run(config: Config, name: str, loss: LossConfig, train: TrainConfig, dataset_uri: str) -> PlannedRun:
    version = open_version(dataset_uri)
    resolved, run_key, folder = run_location(config, name, loss, train, dataset_uri)
    tags = {"loss": loss.name, "backbone": config.model.backbone, "embedding_dim": config.model.embedding_dim,
            "dataset": version.dataset, "dataset_version": version.version, "split_seed": version.manifest["split"]["seed"],
            "run_key": run_key, "stage": "train"}
    return PlannedRun(name, loss, train, dataset_uri, resolved, run_key, folder, tags)


def start_run(planned: PlannedRun, tracking: str, experiment_id: str, parent_run_id: str | None,
              tags: dict[str, Any] | None = None) -> RunLogger:
    """Create the run's MLflow run (a child run when `parent_run_id` is given) and log its params."""
    run_id = create_run(tracking, experiment_id, planned.name, {**planned.tags, **(tags or {})}, parent_run_id)
    logger = RunLogger(tracking, run_id)
    logger.log_params({**planned.resolved, "run_name": planned.name})
    return logger


def fit_run(planned: PlannedRun, logger: RunLogger, output_uri: str, storage_path: str, ray_name: str,
            callbacks: list | None = None, gpus_per_worker: float | None = None) -> dict[str, Any]:
    """Train with a TorchTrainer around `train_loop_per_worker`; returns the last metrics.
    The MLflow run ends FINISHED, or FAILED when training raises."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from components.training.loop import train_loop_per_worker

    train = planned.train
    started = time.time()
    try:
        use_gpu = train.use_gpu if train.use_gpu is not None else cluster_has_gpus()
        _check_resources(train, use_gpu, gpus_per_worker)
        resources = {"CPU": train.cpus_per_worker, **({"GPU": gpus_per_worker} if use_gpu and gpus_per_worker else {})}
        loop_config = {**planned.resolved, "train": train.model_dump(), "output_uri": output_uri,
                       "tracking": {"uri": logger.tracking_uri, "run_id": logger.run_id},
                       "threads_per_worker": train.threads_per_worker}
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config,
            scaling_config=ray.train.ScalingConfig(num_workers=train.num_workers, use_gpu=use_gpu,
                                                   resources_per_worker=resources),
            run_config=ray.train.RunConfig(
                name=ray_name, storage_path=_absolute(storage_path), callbacks=callbacks or None,
                failure_config=ray.train.FailureConfig(max_failures=train.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
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


def train_one(config: Config, console: Console, name: str, loss: LossConfig, train: TrainConfig, dataset_uri: str,
              tracking: str, experiment_id: str, parent_run_id: str | None) -> TrainedRun:
    planned = plan_run(config, name, loss, train, dataset_uri)
    store = Store(config.storage.root)
    folder = planned.folder
    if store.exists(f"{folder}/{RESULT_FILE}"):
        result = store.read_json(f"{folder}/{RESULT_FILE}")
        console.log(f"[train] {name}: already trained ({store.uri_of(folder)}), skipping")
        return TrainedRun(name, loss.name, result["model_uri"], result["run_id"], result["metrics"], skipped=True)

    logger = start_run(planned, tracking, experiment_id, parent_run_id)
    console.log(f"[train] {name}: loss={loss.name} workers={train.num_workers} epochs={train.epochs}")
    model_uri = store.uri_of(f"{folder}/model")
    metrics = fit_run(planned, logger, model_uri, store.uri_of("ray_results"), planned.run_key)
    store.write_json(f"{folder}/{RESULT_FILE}", {"model_uri": model_uri, "run_id": logger.run_id, "metrics": metrics})
    return TrainedRun(name, loss.name, model_uri, logger.run_id, metrics, skipped=False)


def _absolute(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(uri)


def _check_resources(train: TrainConfig, use_gpu: bool, gpus_per_worker: float | None = None) -> None:
    """Fail fast instead of waiting forever for workers the cluster cannot place."""
    import ray

    resources = ray.cluster_resources()
    if use_gpu and gpus_per_worker:
        need_gpu = train.num_workers * gpus_per_worker
        if resources.get("GPU", 0) < need_gpu:
            raise ValueError(f"{train.num_workers} workers × {gpus_per_worker} GPU need {need_gpu} GPUs; "
                             f"the cluster has {resources.get('GPU', 0)}")
        use_gpu = False   # checked here; the check below assumes one GPU per worker
    need_cpu = train.num_workers * train.cpus_per_worker
    if resources.get("CPU", 0) < need_cpu:
        raise ValueError(f"train.num_workers={train.num_workers} × cpus_per_worker={train.cpus_per_worker} needs "
                         f"{need_cpu} CPUs but the cluster has {resources.get('CPU', 0)}: lower train.num_workers "
                         "or train.cpus_per_worker, or add nodes")
    if use_gpu and resources.get("GPU", 0) < train.num_workers:
        raise ValueError(f"train.use_gpu with {train.num_workers} workers needs {train.num_workers} GPUs; "
                         f"the cluster has {resources.get('GPU', 0)}")


def summary_table(runs: list[TrainedRun]) -> Table:
    table = Table(title="training")
    for column in ("run", "loss", "epochs", "train time", f"val {C.METRIC_MAP}", f"val {C.recall_at(1)}", "status"):
        table.add_column(column)
    for run in runs:
        m = run.metrics
        table.add_row(run.name, run.loss, str(int(m.get("epoch", 0))), f"{m.get('train_seconds', 0):.1f} s",
                      f"{m.get('best_val_mAP', float('nan')):.4f}", f"{m.get('val_R@1', float('nan')):.4f}",
                      "skipped (done)" if run.skipped else "trained")
    return table


def result_json(runs: list[TrainedRun]) -> dict[str, Any]:
    return {"stage": "train", "runs": [{"name": r.name, "loss": r.loss, "model": r.model_uri, "mlflow_run_id": r.run_id,
                                        "skipped": r.skipped, "metrics": r.metrics} for r in runs]}
