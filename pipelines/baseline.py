"""The raw-pixel baseline: what retrieval scores with no training at all, on the same images.

Every table stands beside it, because on few-class data a trained embedding can retrieve
unseen classes worse than pixels do. Features are the flattened chips as float32, centred on
the mean image of the TRAINING split (never a statistic of the retrieval images, so nothing is
selected on test data) and L2-normalised by the evaluator; they are scored with the same
evaluator, query/gallery roles and retrieval split (`retrieval_split`: unseen classes, or the
test images of protocol `images`) as the trained runs.

Chips stream through the sample index in batches (`components.inference.split_loader`, the
reader evaluation embeds through), so only the features are held: N × H·W·C float32 (10k chips
of 32×32: 41 MB; the 25k unseen 101×101 chips of the large set: 1 GB).

The record is content-addressed per dataset version and evaluation settings (under the
version's runs folder, `raw_pixels/`) and reused when complete, so it is computed once per
version; each MLflow experiment that evaluates on the version gets one baseline run with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from components import constants as C
from components.data.sample_index import load_sample_index
from components.data.versions import DatasetVersion, open_version, retrieval_split
from components.evaluation.attributes import attribute_ranking_metrics
from components.evaluation.model_eval import (
    METRICS_VERSION,
    attribute_matrix,
    coarse_retrieval_metrics,
    role_masks,
    superclass_labels,
)
from components.evaluation.retrieval import evaluate_retrieval
from components.inference import split_loader
from components.storage import Layout, reuse_when_complete, sha256_json
from components.tracking import RunLogger, create_run
from components.tracking.compare import BASELINE_TAG, finished_runs
from pipelines.config import RESERVED_RUN_NAME
from pipelines.context import StageContext

BASELINE_NAME = RESERVED_RUN_NAME
BASELINE_LOSS = "-"            # the table's loss column: nothing was trained
BASELINE_KEY_TAG = "baseline_key"


@dataclass
class Baseline:
    metrics: dict[str, float]
    pr_curve: tuple[np.ndarray, np.ndarray]     # (recall, precision)
    run_id: str                                 # its MLflow run in the context's experiment
    record_uri: str
    skipped: bool                               # the record was reused


def _pixel_batches(version: DatasetVersion, index, batch_size: int):
    """float32 [b, H·W·C] batches of the index's chips, in index (key) order."""
    for images in split_loader(version, index, batch_size):
        array = np.asarray(images)
        yield array.reshape(len(array), -1).astype(np.float32)


def training_mean(version: DatasetVersion, batch_size: int = 1024) -> np.ndarray:
    """The mean training image, flattened (float64, summed batch by batch)."""
    index = load_sample_index(version, C.SPLIT_TRAIN)
    if len(index) == 0:
        raise ValueError(f"dataset version {version.version} has no {C.SPLIT_TRAIN!r} images to centre the "
                         "raw-pixel baseline on")
    total: np.ndarray | None = None
    for batch in _pixel_batches(version, index, batch_size):
        partial = batch.sum(axis=0, dtype=np.float64)
        total = partial if total is None else total + partial
    assert total is not None
    return total / len(index)


def raw_pixel_features(version: DatasetVersion, split: str, mean: np.ndarray, batch_size: int = 1024):
    """(features float32 [N, D] centred on `mean`, labels [N], query mask, gallery mask, the
    samples' metadata) of `split`."""
    index = load_sample_index(version, split, metas=True)
    if len(index) == 0:
        raise ValueError(f"dataset version {version.version} has no {split!r} images for the raw-pixel baseline")
    features = np.empty((len(index), mean.size), np.float32)
    start = 0
    centre = mean.astype(np.float32)
    for batch in _pixel_batches(version, index, batch_size):
        features[start:start + len(batch)] = batch - centre
        start += len(batch)
    roles = np.array([m.get(C.ROLE, C.ROLE_BOTH) for m in index.metas or []])
    query, gallery = role_masks(roles)
    return features, index.labels, query, gallery, index.metas or []


def measure_raw_pixels(manifest_uri: str, ks: tuple[int, ...], batch_size: int = 1024) -> dict[str, Any]:
    """The baseline's evaluation record (metrics, per-class AP, PR curve) on the retrieval split."""
    version = open_version(manifest_uri)
    split = retrieval_split(version.manifest)
    features, labels, query, gallery, metas = raw_pixel_features(version, split, training_mean(version, batch_size),
                                                                 batch_size)
    # L2-normalised once: retrieval, the attribute ranking and the superclass level all use it.
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    result = evaluate_retrieval(unit, labels, ks, query_mask=query, gallery_mask=gallery, normalize=False,
                                return_per_class=True, return_pr_curve=True)
    metrics = dict(result.metrics)
    attributes = attribute_matrix(metas)
    if attributes is not None:   # continuous attributes: rank them by pixel distance too, as the models' evaluation does
        metrics.update(attribute_ranking_metrics(unit, attributes))
    coarse = superclass_labels(metas)
    if coarse is not None:       # and retrieval at the superclass level
        metrics.update(coarse_retrieval_metrics(unit, coarse, query, gallery))
    classes = version.classes(split)
    assert result.pr_recall is not None and result.pr_precision is not None   # asked for by return_pr_curve
    return {"run": BASELINE_NAME, "dataset": manifest_uri, "split": split, "centred_on": C.SPLIT_TRAIN,
            "metrics": metrics,
            "per_class_AP": {classes[int(k)]: float(v) for k, v in (result.per_class_ap or {}).items()},
            "pr_curve": {"recall": result.pr_recall.tolist(), "precision": result.pr_precision.tolist()}}


def evaluate_baseline(context: StageContext, ks: tuple[int, ...], batch_size: int = 1024) -> Baseline:
    """The baseline of the context's dataset version: its record (measured once per version and
    settings, reused after) and its MLflow run in the context's experiment (created once)."""
    version = open_version(context.dataset)
    key = sha256_json({"baseline": BASELINE_NAME, "ks": list(ks), "dataset": version.uri,
                       "split": retrieval_split(version.manifest), "metrics_version": METRICS_VERSION})[:12]
    record_path = Layout.run(version.dataset, version.version, BASELINE_NAME).evaluation(key)
    record = reuse_when_complete(context.store, record_path)
    skipped = record is not None
    if record is None:
        record = measure_raw_pixels(version.uri, ks, batch_size)
        context.store.write_json(record_path, record)
    curve = (np.array(record["pr_curve"]["recall"]), np.array(record["pr_curve"]["precision"]))
    return Baseline(record["metrics"], curve, _baseline_run(context, version, key, record), context.store.uri_of(record_path),
                    skipped)


def _baseline_run(context: StageContext, version: DatasetVersion, key: str, record: dict[str, Any]) -> str:
    """The experiment's finished MLflow run of this baseline, created (metrics, record) if missing."""
    experiment_id = context.experiment_id
    for run in finished_runs(context.tracking_uri, context.experiment, "baseline"):
        if run.data.tags.get(BASELINE_KEY_TAG) == key:
            return run.info.run_id
    tags = {"stage": "baseline", BASELINE_TAG: BASELINE_NAME, "loss": BASELINE_LOSS, BASELINE_KEY_TAG: key,
            "dataset": version.dataset, "dataset_version": version.version,
            "split_seed": version.manifest["split"]["seed"], "retrieval_split": record["split"]}
    logger = RunLogger(context.tracking_uri, create_run(context.tracking_uri, experiment_id, BASELINE_NAME, tags))
    try:
        logger.log_params({"baseline": BASELINE_NAME, "dataset": version.uri, "centred_on": record["centred_on"]})
        logger.log_metrics(record["metrics"])
        logger.log_dict(record, "evaluation/metrics.json")
    except Exception:
        logger.terminate("FAILED")
        raise
    logger.terminate("FINISHED")
    return logger.run_id
