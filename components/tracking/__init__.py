"""MLflow helpers: the only place in `components/` that talks to MLflow."""

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
           "flatten", "open_experiment", "prepare_store", "start_parent_run"]
