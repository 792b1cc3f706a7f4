"""A parent MLflow run with one child run per trial (a sweep), and closing the children.

The driver creates the parent before any trial starts; each trial creates its own child
(`mlflow.parentRunId` tag, a key tag such as `trial_id`) from its own process. When the
sweep ends, the driver links every trial to its child and ends the children that their
trial could not end itself (a trial stopped early loses its process mid-epoch).
"""

from __future__ import annotations

from typing import Any

from components.tracking.mlflow_runs import RunLogger, create_run

PARENT_TAG = "mlflow.parentRunId"

COMPLETED, STOPPED_EARLY, ERROR = "completed", "stopped early", "error"


def start_parent_run(tracking_uri: str, experiment_id: str, name: str, tags: dict[str, Any],
                     params: dict[str, Any]) -> RunLogger:
    parent = RunLogger(tracking_uri, create_run(tracking_uri, experiment_id, name, tags))
    parent.log_params(params)
    return parent


def child_runs(tracking_uri: str, experiment_id: str, parent_run_id: str, key_tag: str) -> dict[str, Any]:
    """The parent's child runs (MLflow `Run` objects) by the value of their `key_tag`."""
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(tracking_uri).search_runs([experiment_id], filter_string=f"tags.{PARENT_TAG} = '{parent_run_id}'",
                                                  max_results=10000)
    return {run.data.tags.get(key_tag): run for run in runs}


def close_child_runs(tracking_uri: str, experiment_id: str, parent_run_id: str, outcomes: dict[str, str],
                     key_tag: str, status_tag: str) -> dict[str, str]:
    """Tag each child with its outcome (`completed` / `stopped early` / `error`) and end the
    ones still open: stopped early → KILLED (its trainer may have marked it FAILED first),
    error → FAILED. Returns key → child run id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    linked = {}
    for key, run in child_runs(tracking_uri, experiment_id, parent_run_id, key_tag).items():
        if key not in outcomes:
            continue
        outcome, run_id = outcomes[key], run.info.run_id
        linked[key] = run_id
        client.set_tag(run_id, status_tag, outcome)
        if outcome == STOPPED_EARLY and run.info.status != "FINISHED":
            client.set_terminated(run_id, "KILLED")
        elif run.info.status == "RUNNING":
            client.set_terminated(run_id, "FAILED" if outcome == ERROR else "KILLED")
    return linked
