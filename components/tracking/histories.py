"""Reading runs back from MLflow for figures: per-epoch metric histories and JSON artifacts.

Training logs each epoch's metrics at step = epoch (1-based); the driver logs a run's totals
once more at step 0, so histories keep steps >= 1 only when asked (`first_step`).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from components.constants import mlflow_key


def metric_history(tracking_uri: str, run_id: str, name: str, first_step: int = 1) -> dict[int, float]:
    """step -> value of metric `name` (an '@' name is looked up under its MLflow key); the
    latest value logged at a step wins (a resumed run logs its resumed epochs again)."""
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri=tracking_uri).get_metric_history(run_id, mlflow_key(name))
    values: dict[int, tuple[int, float]] = {}
    for metric in history:
        if metric.step >= first_step and metric.timestamp >= values.get(metric.step, (-1, 0.0))[0]:
            values[metric.step] = (metric.timestamp, metric.value)
    return {step: value for step, (_, value) in sorted(values.items())}


def read_json_artifact(tracking_uri: str, run_id: str, artifact_file: str) -> dict[str, Any] | None:
    """The parsed JSON artifact of a run, or None when the run has none at that path."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    folder = os.path.dirname(artifact_file)
    if artifact_file not in {a.path for a in client.list_artifacts(run_id, folder or None)}:
        return None
    with tempfile.TemporaryDirectory() as target:
        with open(client.download_artifacts(run_id, artifact_file, target)) as handle:
            return json.load(handle)
