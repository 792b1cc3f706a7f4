"""The training runs of a config: their plan, their place in the layout, and which are done.

Shared by the stages that train runs (train, tune) and the ones that read them (evaluate,
index), so none of those imports another stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.data.sources import source_is_upright
from components.data.versions import open_version
from components.models.transforms import ROTATION_ANY, ROTATION_NONE
from components.storage import Layout, RunPaths, reuse_when_complete, sha256_json
from components.tracking.compare import RUN_BASE_TAG, SEED_GROUP_TAG
from components.tracking.copies import copy_run_into
from pipelines.config import Config, LossConfig, RunSpec, TrainConfig
from pipelines.context import StageContext

# Settings that change how a run is executed, not what it learns: outside its key (so the
# input pipeline's knobs, added later, keep the keys of earlier runs).
EXECUTION_ONLY = {"fail_at_epoch", "max_failures", "dataset", "loader_workers", "prefetch_batches", "cache_mb"}
# Train settings added after runs were keyed without them, hashed only when set away from their
# default (the behaviour those runs had): name -> default.
KEYED_WHEN_SET: dict[str, Any] = {"amp_cpu": False}



@dataclass(frozen=True)
class RunEntry:
    """One run of the plan: its name, loss and train settings, and the run of the config it
    comes from (`base`: the name before the seed suffix; `init_base`: `init_from` as configured,
    the same for every seed, so the seeds of a fine-tuned run share one seed group)."""

    name: str
    loss: LossConfig
    train: TrainConfig
    base: str
    init_base: str | None


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


def run_plan(config: Config) -> list[RunEntry]:
    """Every run, in order: each entry of `runs` (default: one run of `loss`), once per seed of
    `seeds` when it is given, as `<run>-s<seed>` with `train.seed` set; an `init_from` naming a run
    of the config maps to the same seed's run, so each seed fine-tunes its own parent."""
    specs = config.runs or [RunSpec(name=config.loss.name, loss=config.loss)]
    names = {spec.name for spec in specs}
    plan = []
    for spec in specs:
        train = TrainConfig(**{**config.train.model_dump(), **spec.overrides})
        init = train.init_from
        if not config.seeds:
            plan.append(RunEntry(spec.name, spec.loss, train, spec.name, init))
            continue
        for seed in config.seeds:
            update: dict[str, Any] = {"seed": seed}
            if init in names:
                update["init_from"] = f"{init}-s{seed}"
            plan.append(RunEntry(f"{spec.name}-s{seed}", spec.loss, train.model_copy(update=update), spec.name, init))
    return plan


def plan_run(config: Config, name: str, loss: LossConfig, train: TrainConfig, dataset_uri: str,
             base: str | None = None, init_base: str | None = None) -> PlannedRun:
    """The run's resolved config, key and folder. The key hashes everything that determines the
    trained model, so the same run on the same dataset version always lands in the same
    folder (and is reused when it is complete there). `base` / `init_base` (from `RunEntry`)
    name the configured run, for the seed-group tag; without them the run is its own base."""
    version = open_version(dataset_uri)
    train = with_source_rotation(train, version.manifest)
    resolved = {"model": config.model.model_dump(), "loss": loss.model_dump(),
                "train": keyed_train(train), "dataset": dataset_uri}
    run_key = f"{name}-{sha256_json(resolved)[:12]}"
    seed_group = sha256_json({**resolved, "train": keyed_train(train, exclude=("seed", "init_from")),
                              "init_from": init_base if init_base is not None else train.init_from})[:12]
    # Tags that let `chipmatch compare` put the seeds of one run on one row: runs of one seed
    # group differ only by `train.seed` (and by which seed's parent they start from).
    tags = {"loss": loss.name, "backbone": config.model.backbone, "embedding_dim": config.model.embedding_dim,
            "dataset": version.dataset, "dataset_version": version.version, "split_seed": version.manifest["split"]["seed"],
            "run_key": run_key, "stage": "train", "seed": train.seed, SEED_GROUP_TAG: seed_group,
            RUN_BASE_TAG: base or name}
    paths = Layout.run(version.dataset, version.version, run_key)
    return PlannedRun(name, loss, train, dataset_uri, resolved, run_key, paths, tags)


def with_source_rotation(train: TrainConfig, manifest: dict[str, Any]) -> TrainConfig:
    """`train` with `rotation` set when the config leaves it to the source (None) and augments:
    no rotations for upright imagery, any angle for overhead chips. Resolved before the run is
    keyed, so the key names the augmentation the run trains with. Without augmentation the
    rotation stays unset (it does nothing; see `keyed_train`)."""
    if train.rotation is not None or not train.augment:
        return train
    rotation = ROTATION_NONE if source_is_upright(manifest["source"]) else ROTATION_ANY
    return train.model_copy(update={"rotation": rotation})


def keyed_train(train: TrainConfig, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The train settings that enter a run's key. An unset rotation (augmentation off) is hashed
    as "any", the one default every source had before sources chose their own, and a setting
    added later (`KEYED_WHEN_SET`) enters the key only when it differs from its default, so
    runs made before keep their keys (and are reused)."""
    settings = without_later_defaults(train.model_dump(exclude=EXECUTION_ONLY | set(exclude)))
    if "rotation" in settings and settings["rotation"] is None:
        settings["rotation"] = ROTATION_ANY
    return settings


def without_later_defaults(train_settings: dict[str, Any]) -> dict[str, Any]:
    """`train_settings` (a dumped `train` section) without the `KEYED_WHEN_SET` settings that
    are at their defaults: for every key hashed from train settings (runs, sweeps, retraining
    attempts), so that adding a setting changes no key made before it."""
    return {name: value for name, value in train_settings.items()
            if not (name in KEYED_WHEN_SET and value == KEYED_WHEN_SET[name])}


def finished_run(context: StageContext, planned: PlannedRun) -> TrainedRun | None:
    """The run as recorded by an earlier training of the same plan, if that completed. Its
    MLflow run as this command's experiment sees it: trained by another experiment, it is
    copied into this one (`components.tracking.copies`), so compare shows every run of the config."""
    result = reuse_when_complete(context.store, planned.paths.result)
    if result is None:
        return None
    run_id = copy_run_into(context.tracking_uri, context.experiment_id, result["run_id"])
    return TrainedRun(planned.name, planned.loss.name, result["model_uri"], run_id, result["metrics"],
                      skipped=True, paths=planned.paths)


def trained_runs(config: Config, context: StageContext) -> list[TrainedRun]:
    """The runs of this config that have finished training (in plan order)."""
    runs: list[TrainedRun] = []
    model_uris: dict[str, str] = {}
    for entry in run_plan(config):
        train = entry.train
        if train.init_from in model_uris:
            train = train.model_copy(update={"init_from": model_uris[train.init_from]})
        planned = plan_run(config, entry.name, entry.loss, train, context.dataset, entry.base, entry.init_base)
        done = finished_run(context, planned)
        if done is not None:
            model_uris[entry.name] = done.model_uri
            runs.append(done)
    return runs
