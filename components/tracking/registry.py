"""The MLflow model registry of retraining: model versions and the `champion` / `previous` aliases.

A trained run's model bundle (the folder `components.inference` loads) is registered as a
version of one registered model, with tags saying what it was trained on and how (dataset
version and manifest, run key, recipe), so a later retrain can fine-tune it, evaluate it on
its own benchmark and find its index without any other record.

Aliases are MLflow's own (`MlflowClient.set_registered_model_alias`): an alias names one
version of a registered model and setting it again moves it, so `<name>@champion` is the
model in service and `<name>@previous` the one before it. Everything goes through
`MlflowClient`, so the same code works on an sqlite store and on a tracking server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

CHAMPION = "champion"
PREVIOUS = "previous"

# Model version tags (strings, as MLflow stores them).
TAG_DATASET = "dataset"                  # dataset name (lineage of versions)
TAG_DATASET_VERSION = "dataset_version"  # the version it was trained on
TAG_DATASET_MANIFEST = "dataset_manifest"  # that version's manifest URI (its benchmark)
TAG_RUN_KEY = "run_key"                  # its run folder: Layout.run(dataset, version, run_key)
TAG_RUN_NAME = "run_name"
TAG_RECIPE = "recipe"                    # JSON: model, loss and train settings it was trained with


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    source: str               # the model bundle folder
    run_id: str | None        # the MLflow run that trained it
    tags: dict[str, str]

    def recipe(self) -> dict[str, Any]:
        if TAG_RECIPE not in self.tags:
            raise KeyError(f"model version {self.name} v{self.version} has no {TAG_RECIPE!r} tag")
        return json.loads(self.tags[TAG_RECIPE])


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _as_version(entity) -> ModelVersion:
    return ModelVersion(name=entity.name, version=int(entity.version), source=entity.source,
                        run_id=entity.run_id or None, tags=dict(entity.tags or {}))


def _is_missing(exc: Exception) -> bool:
    # A missing alias is INVALID_PARAMETER_VALUE in MLflow 3's sqlite store, a missing model
    # RESOURCE_DOES_NOT_EXIST; both mean "not there", anything else is a real failure.
    return getattr(exc, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def by_alias(tracking_uri: str, name: str, alias: str) -> ModelVersion | None:
    """The version `alias` points at, or None (no such model or alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return _as_version(_client(tracking_uri).get_model_version_by_alias(name, alias))
    except MlflowException as exc:
        if _is_missing(exc):
            return None
        raise


def get_version(tracking_uri: str, name: str, version: int) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return _as_version(_client(tracking_uri).get_model_version(name, str(version)))
    except MlflowException as exc:
        if _is_missing(exc):
            return None
        raise


def versions(tracking_uri: str, name: str) -> list[ModelVersion]:
    """Every version of `name`, oldest first (none when the model is not registered)."""
    found = _client(tracking_uri).search_model_versions(f"name = '{name}'")
    return sorted((_as_version(v) for v in found), key=lambda v: v.version)


def find_by_run(tracking_uri: str, name: str, run_id: str) -> ModelVersion | None:
    """The (oldest) version of `name` registered from the MLflow run `run_id`."""
    matches = [v for v in versions(tracking_uri, name) if v.run_id == run_id]
    return matches[0] if matches else None


def register(tracking_uri: str, name: str, source: str, run_id: str, tags: dict[str, Any]) -> ModelVersion:
    """Register the bundle at `source` (trained by `run_id`) as a version of `name`, creating
    the registered model on first use. Idempotent: a version already registered from the
    same run and source is returned as it is, so a re-run after a crash adds no version."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        client.create_registered_model(name, description="chipmatch embedding models; @champion is in service")
    except MlflowException as exc:
        if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
            raise
    existing = find_by_run(tracking_uri, name, run_id)
    if existing is not None and existing.source == source:
        return existing
    created = client.create_model_version(name, source=source, run_id=run_id,
                                          tags={k: str(v) for k, v in tags.items()})
    return _as_version(created)


def set_alias(tracking_uri: str, name: str, alias: str, version: int) -> None:
    _client(tracking_uri).set_registered_model_alias(name, alias, str(version))


def delete_alias(tracking_uri: str, name: str, alias: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        _client(tracking_uri).delete_registered_model_alias(name, alias)
    except MlflowException as exc:
        if not _is_missing(exc):
            raise


def set_previous(tracking_uri: str, name: str, previous: int | None) -> None:
    """`previous` on a version, or on none."""
    if previous is None:
        delete_alias(tracking_uri, name, PREVIOUS)
    else:
        set_alias(tracking_uri, name, PREVIOUS, previous)


def set_champion(tracking_uri: str, name: str, champion: int, previous: int | None) -> None:
    """`champion` on one version and `previous` on another (or on none). `previous` moves
    first: between the two calls the old champion is both, never neither."""
    set_previous(tracking_uri, name, previous)
    set_alias(tracking_uri, name, CHAMPION, champion)


# --- decision runs ---------------------------------------------------------------------------
# Every gate decision of `chipmatch retrain` is an MLflow run of its own experiment, tagged with
# the pair it compared, so a later retrain can tell whether that pair was already decided.

TAG_DECISION = "decision"                # promote | not_promoted | bootstrap
TAG_CHAMPION_VERSION = "champion_version"
TAG_CHALLENGER_RUN = "challenger_run_id"


def decided_before(tracking_uri: str, experiment_id: str, tags: dict[str, Any]) -> dict[str, str] | None:
    """The tags of the newest finished decision run whose tags include all of `tags`, or None."""
    clauses = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    runs = _client(tracking_uri).search_runs(
        [experiment_id], filter_string=f"{clauses} and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return dict(runs[0].data.tags) if runs else None
