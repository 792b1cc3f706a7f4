"""A finished run shown in a second experiment.

chipmatch reuses a trained run wherever the same config meets the same dataset version (its
folder is content-addressed), but an MLflow run belongs to one experiment, so an experiment
whose config names a run another experiment trained would miss that row in `chipmatch
compare`. `copy_run_into` copies the run into the reusing experiment: its name, tags
(MLflow's own `mlflow.*` tags aside), params, the full history of every metric (convergence
plots read them) and its artifacts, tagged `chipmatch.copied_from = <source run id>`, with the
source's status and times. It is made once per experiment and source run: a later call finds
it by that tag. MLflow cannot move or share a run between experiments, hence the copy.
"""

from __future__ import annotations

import tempfile

from components.tracking.mlflow_runs import _client

COPIED_FROM_TAG = "chipmatch.copied_from"
_METRICS_PER_BATCH, _PARAMS_PER_BATCH = 1000, 100   # MLflow's log_batch limits


def copy_run_into(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The id of `run_id` as seen from `experiment_id`: the run itself when it belongs there,
    else its copy there (made now if there is none yet)."""
    from mlflow.entities import Metric, Param

    client = _client(tracking_uri)
    source = client.get_run(run_id)
    if source.info.experiment_id == experiment_id:
        return run_id
    found = client.search_runs([experiment_id], filter_string=f"tags.`{COPIED_FROM_TAG}` = '{run_id}'", max_results=1)
    if found:
        return found[0].info.run_id
    tags = {key: value for key, value in source.data.tags.items() if not key.startswith("mlflow.")}
    copy = client.create_run(experiment_id, start_time=source.info.start_time, run_name=source.info.run_name,
                             tags={**tags, COPIED_FROM_TAG: run_id})
    copy_id = copy.info.run_id
    metrics = [Metric(m.key, m.value, m.timestamp, m.step) for key in source.data.metrics
               for m in client.get_metric_history(run_id, key)]
    params = [Param(key, value) for key, value in source.data.params.items()]
    for start in range(0, len(metrics), _METRICS_PER_BATCH):
        client.log_batch(copy_id, metrics=metrics[start:start + _METRICS_PER_BATCH])
    for start in range(0, len(params), _PARAMS_PER_BATCH):
        client.log_batch(copy_id, params=params[start:start + _PARAMS_PER_BATCH])
    if client.list_artifacts(run_id):
        with tempfile.TemporaryDirectory() as folder:
            client.log_artifacts(copy_id, client.download_artifacts(run_id, "", folder))
    client.set_terminated(copy_id, status=source.info.status, end_time=source.info.end_time)
    return copy_id
