"""Runs are created by the driver (it needs their ids: parents, compare, registry) and
written to by rank 0 of the training workers through an `MlflowClient`, which needs no
global "active run" state and so is safe inside Ray workers.
"""

from __future__ import annotations

import os
from typing import Any

from components.constants import mlflow_key
from components.errors import ConfigError

MAX_PARAM_LENGTH = 6000  # MLflow rejects longer param values


def default_tracking_uri(storage_root: str) -> str:
    """sqlite next to the outputs for a local storage root (a server URI otherwise)."""
    if "://" in storage_root and not storage_root.startswith("file://"):
        raise ConfigError(
            f"storage.root {storage_root!r} is remote, so tracking.uri has no default (an sqlite store "
            "cannot live on object storage): set tracking.uri to an MLflow server (e.g. http://mlflow:5000) "
            "or a local sqlite file (sqlite:////abs/path/mlflow.db); artifacts go under storage.root either way"
        )
    root = os.path.abspath(storage_root.removeprefix("file://"))
    os.makedirs(root, exist_ok=True)
    return f"sqlite:///{root}/mlflow.db"


def _client(tracking_uri: str | None):
    # None: MLflow's default store (MLFLOW_TRACKING_URI, else MLflow's own default).
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def prepare_store(tracking_uri: str) -> None:
    """Create the tracking store once, from one process.

    Two processes creating a new sqlite store at once can fail (schema migration race), so
    the driver touches the store before any worker or trial does.
    """
    _client(tracking_uri).search_experiments(max_results=1)


def ensure_experiment(tracking_uri: str, name: str, artifact_location: str | None = None) -> str:
    client = _client(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # created concurrently by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def open_experiment(tracking_uri: str, name: str, artifact_location: str | None = None) -> str:
    """Create the store (once, from the driver) and the experiment if needed; its id."""
    prepare_store(tracking_uri)
    return ensure_experiment(tracking_uri, name, artifact_location)


def create_run(tracking_uri: str, experiment_id: str, run_name: str, tags: dict[str, Any] | None = None,
               parent_run_id: str | None = None) -> str:
    tags = {k: str(v) for k, v in (tags or {}).items()}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = _client(tracking_uri).create_run(experiment_id, run_name=run_name, tags=tags)
    return run.info.run_id


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} → {"train.lr": 1} (MLflow params are flat)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class RunLogger:
    def __init__(self, tracking_uri: str | None, run_id: str):
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.client = _client(tracking_uri)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        fresh = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in flatten(params).items() if k not in existing]
        for start in range(0, len(fresh), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=fresh[start:start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(mlflow_key(k), float(v), now, step or 0) for k, v in metrics.items() if _is_number(v)]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path)

    def log_dict(self, values: dict, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, values, artifact_file)

    def log_torch_model(self, model, name: str = "model") -> None:
        """Log as an MLflow PyTorch model (pickle: torch.export would freeze the batch size)."""
        import logging

        import mlflow
        import mlflow.pytorch

        # Known and accepted here: pickle serialisation, and torch's "+cpu" local version label.
        quiet = [logging.getLogger(n) for n in ("mlflow.pytorch", "mlflow.utils.requirements_utils")]
        levels = [logger.level for logger in quiet]
        for logger in quiet:
            logger.setLevel(logging.ERROR)
        try:
            mlflow.set_tracking_uri(self.tracking_uri)
            with mlflow.start_run(run_id=self.run_id):
                mlflow.pytorch.log_model(model, name=name, serialization_format="pickle")
        finally:
            for logger, level in zip(quiet, levels):
                logger.setLevel(level)

    def terminate(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
