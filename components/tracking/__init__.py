"""MLflow helpers: the only place in `components/` that talks to MLflow."""

from components.tracking.mlflow_runs import (
    RunLogger,
    create_run,
    default_tracking_uri,
    ensure_experiment,
    flatten,
    prepare_store,
)

__all__ = ["RunLogger", "create_run", "default_tracking_uri", "ensure_experiment", "flatten", "prepare_store"]
