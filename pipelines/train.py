"""The train stage: one Ray Train run per configured loss, tracked in MLflow.

The runs of the config come from `pipelines.runs` (plan, key, folder), the launch from
`pipelines.trainer`. A run whose output for the same config and dataset version is complete
is reused, so a pipeline resumes.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from components import constants as C
from pipelines.config import Config, TrainConfig
from pipelines.context import StageContext, stage_context
from pipelines.runs import RunEntry, TrainedRun, finished_run, plan_run, run_plan
from pipelines.trainer import check_loss_builds, fit_batches, fit_run, start_run

__all__ = ["run_train", "summary_table", "result_json"]


def run_train(config: Config, context: StageContext | Console | None = None,
              parent_run_id: str | None = None) -> list[TrainedRun]:
    context = stage_context(config, context)
    _ = context.dataset   # a missing dataset version is named before Ray starts
    context.ensure_ray(config.ray)
    done: dict[str, TrainedRun] = {}
    for entry in run_plan(config):
        train = entry.train
        if train.init_from in done:
            train = train.model_copy(update={"init_from": done[train.init_from].model_uri})
        done[entry.name] = train_one(config, context, entry, train, parent_run_id)
    return list(done.values())


def train_one(config: Config, context: StageContext, entry: RunEntry, train: TrainConfig,
              parent_run_id: str | None) -> TrainedRun:
    """Train `entry` with `train` (its settings, `init_from` resolved to a model URI)."""
    name, loss = entry.name, entry.loss
    planned = plan_run(config, name, loss, train, context.dataset, entry.base, entry.init_base)
    reused = finished_run(context, planned)
    if reused is not None:
        context.console.log(f"[train] {name}: already trained ({context.store.uri_of(planned.paths.folder)}), skipping")
        return reused
    check_loss_builds(config, planned)
    planned.train, adapted = fit_batches(planned)
    if adapted:
        context.console.log(f"[train] {name}: {adapted}")
    logger = start_run(planned, context.tracking_uri, context.experiment_id, parent_run_id)
    context.console.log(f"[train] {name}: loss={loss.name} workers={train.num_workers} epochs={train.epochs}")
    store = context.store
    model_uri = store.uri_of(planned.paths.model)
    # evaluate.per_epoch measures every epoch's checkpoint afterwards: keep them all.
    metrics = fit_run(planned, logger, model_uri, store.uri_of(context.layout.ray_results()), planned.run_key,
                      keep_checkpoints=None if config.evaluate.per_epoch else 2)
    store.write_json(planned.paths.result, {"model_uri": model_uri, "run_id": logger.run_id, "metrics": metrics})
    return TrainedRun(name, loss.name, model_uri, logger.run_id, metrics, skipped=False, paths=planned.paths)


def summary_table(runs: list[TrainedRun]) -> Table:
    table = Table(title="training")
    for column in ("run", "loss", "epochs", "train time", f"val {C.METRIC_MAP}", f"val {C.recall_at(1)}", "status"):
        table.add_column(column, no_wrap=column in ("run", "loss"))
    for run in runs:
        m = run.metrics
        table.add_row(run.name, run.loss, str(int(m.get("epoch", 0))), f"{m.get('train_seconds', 0):.1f} s",
                      f"{m.get('best_val_mAP', float('nan')):.4f}", f"{m.get('val_R@1', float('nan')):.4f}",
                      "skipped (done)" if run.skipped else "trained")
    return table


def result_json(runs: list[TrainedRun]) -> dict[str, Any]:
    return {"stage": "train", "runs": [{"name": r.name, "loss": r.loss, "model": r.model_uri, "mlflow_run_id": r.run_id,
                                        "skipped": r.skipped, "metrics": r.metrics} for r in runs]}
