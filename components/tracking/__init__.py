"""MLflow helpers: the only place in `components/` that talks to MLflow."""

from components.tracking.histories import metric_history, read_json_artifact
from components.tracking.mlflow_runs import (
    RunLogger,
    create_run,
    default_tracking_uri,
    ensure_experiment,
    flatten,
    open_experiment,
    prepare_store,
)
from components.tracking.parent_runs import child_runs, close_child_runs, start_parent_run

__all__ = ["RunLogger", "child_runs", "close_child_runs", "create_run", "default_tracking_uri", "ensure_experiment",
           "flatten", "metric_history", "open_experiment", "prepare_store", "read_json_artifact", "start_parent_run"]
