"""The training runs of a config: their plan, their place in the layout, and which are done.

Shared by the stages that train runs (train, tune) and the ones that read them (evaluate,
index), so none of those imports another stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.data.versions import open_version
from components.storage import Layout, RunPaths, reuse_when_complete, sha256_json
from pipelines.config import Config, LossConfig, TrainConfig
from pipelines.context import StageContext

# Settings that change how a run is executed, not what it learns: outside its key (so the
# input pipeline's knobs, added later, keep the keys of earlier runs).
EXECUTION_ONLY = {"fail_at_epoch", "max_failures", "dataset", "loader_workers", "prefetch_batches", "cache_mb"}


@dataclass
class TrainedRun:
    name: str
    loss: str
    model_uri: str            # folder holding the model bundle
    run_id: str               # MLflow run
    metrics: dict[str, Any]
    skipped: bool
    paths: RunPaths           # where its outputs (model, evaluations, indexes) live


@dataclass
class PlannedRun:
    """One training run, resolved: what the train stage and a tune trial both train."""

    name: str
    loss: LossConfig
    train: TrainConfig
    dataset_uri: str
    resolved: dict[str, Any]   # everything that determines the trained model (hashed into run_key)
    run_key: str
    paths: RunPaths            # where the train stage puts it (a tune trial uses its sweep's folder)
    tags: dict[str, Any]


def run_plan(config: Config) -> list[tuple[str, LossConfig, TrainConfig]]:
    """(name, loss, train settings) of every run, in order."""
    if not config.runs:
        return [(config.loss.name, config.loss, config.train)]
    plan = []
    for run in config.runs:
        plan.append((run.name, run.loss, TrainConfig(**{**config.train.model_dump(), **run.overrides})))
    return plan


def plan_run(config: Config, name: str, loss: LossConfig, train: TrainConfig, dataset_uri: str) -> PlannedRun:
    """The run's resolved config, key and folder. The key hashes everything that determines the
    trained model, so the same run on the same dataset version always lands in the same
    folder (and is reused when it is complete there)."""
    version = open_version(dataset_uri)
    resolved = {"model": config.model.model_dump(), "loss": loss.model_dump(),
                "train": train.model_dump(exclude=EXECUTION_ONLY), "dataset": dataset_uri}
    run_key = f"{name}-{sha256_json(resolved)[:12]}"
    tags = {"loss": loss.name, "backbone": config.model.backbone, "embedding_dim": config.model.embedding_dim,
            "dataset": version.dataset, "dataset_version": version.version, "split_seed": version.manifest["split"]["seed"],
            "run_key": run_key, "stage": "train"}
    paths = Layout.run(version.dataset, version.version, run_key)
    return PlannedRun(name, loss, train, dataset_uri, resolved, run_key, paths, tags)


def finished_run(context: StageContext, planned: PlannedRun) -> TrainedRun | None:
    """The run as recorded by an earlier training of the same plan, if that completed."""
    result = reuse_when_complete(context.store, planned.paths.result)
    if result is None:
        return None
    return TrainedRun(planned.name, planned.loss.name, result["model_uri"], result["run_id"], result["metrics"],
                      skipped=True, paths=planned.paths)


def trained_runs(config: Config, context: StageContext) -> list[TrainedRun]:
    """The runs of this config that have finished training (in plan order)."""
    runs: list[TrainedRun] = []
    model_uris: dict[str, str] = {}
    for name, loss, train in run_plan(config):
        if train.init_from in model_uris:
            train = train.model_copy(update={"init_from": model_uris[train.init_from]})
        done = finished_run(context, plan_run(config, name, loss, train, context.dataset))
        if done is not None:
            model_uris[name] = done.model_uri
            runs.append(done)
    return runs
