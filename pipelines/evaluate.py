"""The evaluate stage: every trained run of the config, measured on the version's retrieval
split (the unseen classes, or the held-out test images of protocol `images`), beside the
untrained raw-pixel baseline of the same images (`pipelines.baseline`, the last row).

Writes an evaluation record into each run's folder (reused when it is there for the same
evaluation settings), logs the metrics, a metrics JSON, the retrieval grid and the PR curves
of all runs of the config (and the baseline) on one plot to each run's MLflow run.
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from components import constants as C
from components.data.reader import SplitArrays, load_split
from components.data.versions import open_version, retrieval_split
from components.errors import MissingDataError
from components.evaluation.model_eval import METRICS_VERSION, ModelEvaluation, evaluate_model, role_masks
from components.storage import reuse_when_complete, sha256_json
from components.tracking import RunLogger
from pipelines.baseline import BASELINE_LOSS, BASELINE_NAME, evaluate_baseline
from pipelines.config import Config
from pipelines.context import StageContext, stage_context
from pipelines.ray_session import cluster_has_gpus
from pipelines.runs import TrainedRun, trained_runs


@dataclass
class EvaluatedRun:
    name: str
    loss: str
    run_id: str
    metrics: dict[str, float]           # flat: main tap unprefixed, other taps "<tap>.<metric>"
    evaluation_uri: str
    skipped: bool
    baseline: bool = False              # the raw-pixel row: no model, main tap only


def run_evaluate(config: Config, context: StageContext | Console | None = None,
                 runs: list[TrainedRun] | None = None) -> list[EvaluatedRun]:
    context = stage_context(config, context)
    dataset_uri = context.dataset
    runs = runs if runs is not None else trained_runs(config, context)
    if not runs:
        raise MissingDataError("no trained runs for this config and dataset version: run `chipmatch train` first")
    context.ensure_ray(config.ray)
    settings = config.evaluate.model_dump()
    use_gpu = settings.pop("use_gpu")
    per_epoch = settings.pop("per_epoch")   # its own record (below): the run's record keeps its key
    use_gpu = use_gpu if use_gpu is not None else cluster_has_gpus()
    tag = sha256_json({**settings, "dataset": dataset_uri, "metrics_version": METRICS_VERSION})[:12]
    evaluated, curves = [], {}
    store, console = context.store, context.console
    # The retrieval split's chips (for the grids: unseen classes, or the images protocol's test
    # images) are read once, and only if some run needs them.
    version = open_version(dataset_uri)
    split = retrieval_split(version.manifest)
    retrieval_chips = functools.lru_cache(maxsize=1)(lambda: load_split(version, split))
    for run in runs:
        record_path = run.paths.evaluation(tag)
        saved = reuse_when_complete(store, record_path)
        if saved is not None:
            console.log(f"[evaluate] {run.name}: already evaluated, skipping")
            curves[run.name] = (np.array(saved["pr_curve"]["recall"]), np.array(saved["pr_curve"]["precision"]))
            evaluated.append(EvaluatedRun(run.name, run.loss, run.run_id, saved["metrics"], store.uri_of(record_path), True))
            continue
        console.log(f"[evaluate] {run.name}: embedding split {split!r}, taps {config.evaluate.taps}")
        result = evaluate_model(dataset_uri, run.model_uri, tuple(config.evaluate.taps), tuple(config.evaluate.ks),
                                config.evaluate.batch_size, config.evaluate.num_actors, use_gpu)
        main = config.evaluate.taps[0]
        flat = result.flat_metrics(main)
        curves[run.name] = result.pr_curves[main]
        record = {"run": run.name, "loss": run.loss, "model": run.model_uri, "dataset": dataset_uri,
                  "metrics": flat, "per_tap": result.metrics, "per_class_AP": result.per_class_ap,
                  "pr_curve": {"recall": result.pr_curves[main][0].tolist(), "precision": result.pr_curves[main][1].tolist()}}
        store.write_json(record_path, record)
        _log(config, context, run, flat, record, result, retrieval_chips())
        evaluated.append(EvaluatedRun(run.name, run.loss, run.run_id, flat, store.uri_of(record_path), False))
    if per_epoch:
        for run in runs:
            _evaluate_epochs(config, context, run, tag)
    baseline = evaluate_baseline(context, tuple(config.evaluate.ks), config.evaluate.batch_size)
    if not baseline.skipped:
        console.log(f"[evaluate] {BASELINE_NAME}: raw pixels of split {split!r}, centred on the training images")
    curves[BASELINE_NAME] = baseline.pr_curve
    evaluated.append(EvaluatedRun(BASELINE_NAME, BASELINE_LOSS, baseline.run_id, baseline.metrics, baseline.record_uri,
                                  baseline.skipped, baseline=True))
    if any(not run.skipped for run in evaluated):  # a re-run with nothing new writes nothing
        _log_pr_curves(context, evaluated, curves)
    return evaluated


def _evaluate_epochs(config: Config, context: StageContext, run: TrainedRun, tag: str) -> None:
    """The retrieval split at each kept training checkpoint of `run` (`pipelines.epochs`),
    logged per epoch; recorded beside the run's evaluation and reused like it."""
    from pipelines.epochs import evaluate_epochs, log_epochs

    record_path = run.paths.evaluation(f"epochs-{tag}")
    if reuse_when_complete(context.store, record_path) is not None:
        return
    folder = f"{context.layout.ray_results()}/{run.paths.run_key}"
    measured = evaluate_epochs(context.store, folder, context.dataset, run.model_uri, tuple(config.evaluate.ks),
                               config.evaluate.batch_size)
    if not measured:
        context.console.log(f"[evaluate] {run.name}: no training checkpoints under {context.store.uri_of(folder)} "
                            "(train with evaluate.per_epoch=true to keep them all)")
        return
    log_epochs(context.tracking_uri, run.run_id, measured)
    context.store.write_json(record_path, {"run": run.name, "epochs": {str(e): m for e, m in measured.items()}})
    context.console.log(f"[evaluate] {run.name}: retrieval split measured at epochs {sorted(measured)}")


def _log(config: Config, context: StageContext, run: TrainedRun, flat: dict, record: dict, result: ModelEvaluation,
         chips: SplitArrays) -> None:
    logger = RunLogger(context.tracking_uri, run.run_id)
    logger.log_metrics(flat)
    logger.log_dict(record, "evaluation/metrics.json")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "retrieval_grid.png")
        write_retrieval_grid(result, chips, config.evaluate.taps[0], config.evaluate.grid_queries,
                             config.evaluate.grid_k, path)
        logger.log_artifact(path, "evaluation")


def write_retrieval_grid(result: ModelEvaluation, arrays: SplitArrays, tap: str, num_queries: int, k: int, path: str) -> None:
    """Queries spread over the retrieval split (`arrays`: its chips), each followed by its top-k gallery items."""
    from components.evaluation.plots import retrieval_grid

    unseen = result.unseen
    if unseen is None:
        raise RuntimeError("the evaluation kept no retrieval-split embeddings to draw the retrieval grid from")
    position = {key: i for i, key in enumerate(arrays.keys)}
    features = unseen.features[tap] / np.linalg.norm(unseen.features[tap], axis=1, keepdims=True).clip(1e-12)
    query, gallery = role_masks(unseen.roles)
    query_rows = np.flatnonzero(query)[np.linspace(0, query.sum() - 1, min(num_queries, query.sum())).astype(int)]
    gallery_rows = np.flatnonzero(gallery)

    def images(rows) -> list[np.ndarray]:
        return [arrays.images[position[unseen.keys[r]]] for r in rows]

    retrieved_rows = []
    for row in query_rows:
        scores = features[gallery_rows] @ features[row]
        order = [gallery_rows[i] for i in np.argsort(-scores, kind="stable") if gallery_rows[i] != row][:k]
        retrieved_rows.append(order)
    retrieval_grid(images(query_rows), [images(r) for r in retrieved_rows],
                   [unseen.labels[r] for r in query_rows], [[unseen.labels[i] for i in r] for r in retrieved_rows], path)


def _log_pr_curves(context: StageContext, evaluated: list[EvaluatedRun], curves: dict) -> None:
    from components.evaluation.plots import plot_pr_curves

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "pr_curves.png")
        plot_pr_curves({run.name if run.baseline else f"{run.name} ({run.loss})": curves[run.name] for run in evaluated},
                       path)
        with open(path, "rb") as handle:
            context.store.write_bytes(context.layout.pr_curves(context.experiment), handle.read())
        for run in evaluated:
            RunLogger(context.tracking_uri, run.run_id).log_artifact(path, "evaluation")


def summary_table(evaluated: list[EvaluatedRun], taps: list[str]) -> Table:
    """The main tap in full, the other taps by mAP and R@1 (side by side, to compare layers)."""
    main_columns = [C.METRIC_MAP, C.METRIC_MAP_AT_R, C.recall_at(1), C.recall_at(8)]
    other_columns = [C.METRIC_MAP, C.recall_at(1)]
    table = Table(title=f"retrieval on held-out data ({taps[0]} layer; other layers prefixed)")
    headers = ["run", "loss", *main_columns, C.METRIC_ACCURACY,
               *[f"{tap} {c}" for tap in taps[1:] for c in other_columns]]
    for header in headers:
        table.add_column(header, justify="left" if header in ("run", "loss") else "right",
                         no_wrap=header in ("run", "loss"), overflow="fold")
    def cell(metrics: dict, key: str) -> str:
        return f"{metrics[key]:.4f}" if key in metrics else "-"

    for run in evaluated:
        cells = [run.name, run.loss, *[cell(run.metrics, c) for c in main_columns], cell(run.metrics, C.METRIC_ACCURACY),
                 *[cell(run.metrics, f"{tap}.{c}") for tap in taps[1:] for c in other_columns]]
        table.add_row(*cells)
    return table


def result_json(evaluated: list[EvaluatedRun]) -> dict[str, Any]:
    return {"stage": "evaluate", "runs": [{"name": r.name, "loss": r.loss, "mlflow_run_id": r.run_id,
                                           "evaluation": r.evaluation_uri, "skipped": r.skipped, "metrics": r.metrics,
                                           "baseline": r.baseline} for r in evaluated]}
