"""The raw-pixel baseline against an independent reference (sequential shard reader, sklearn AP,
brute-force R@1), its reuse, and its MLflow row in the comparison table (real sqlite)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rich.console import Console
from sklearn.metrics import average_precision_score

from components import constants as C
from components.data.reader import load_split
from components.data.versions import open_version, retrieval_split
from components.evaluation.attributes import attribute_ranking_metrics
from components.evaluation.model_eval import attribute_matrix
from components.tracking.compare import comparison_table, display_rows
from pipelines.baseline import BASELINE_NAME, evaluate_baseline, measure_raw_pixels, training_mean
from pipelines.config import load_config
from pipelines.context import StageContext


def reference_features(manifest: str):
    """Pixels read by the sequential webdataset path (not the sample index), centred on the
    training images' mean, L2-normalised."""
    version = open_version(manifest)
    train = load_split(version, C.SPLIT_TRAIN)
    retrieval = load_split(version, retrieval_split(version.manifest))
    mean = train.images.reshape(len(train.images), -1).astype(np.float64).mean(axis=0)
    features = retrieval.images.reshape(len(retrieval.images), -1).astype(np.float64) - mean
    return mean, features / np.linalg.norm(features, axis=1, keepdims=True), retrieval.labels


def test_training_mean_is_the_mean_training_image(tiny_dataset):
    _, manifest = tiny_dataset
    mean, _, _ = reference_features(manifest)
    np.testing.assert_allclose(training_mean(open_version(manifest), batch_size=37), mean, rtol=1e-10)


def test_raw_pixel_metrics_match_sklearn_and_brute_force(tiny_dataset):
    _, manifest = tiny_dataset
    _, features, labels = reference_features(manifest)
    record = measure_raw_pixels(manifest, (1, 4), batch_size=50)
    scores = features @ features.T
    aps, hits = [], []
    for q in range(len(labels)):   # leave-one-out: every image queries all the others
        others = np.arange(len(labels)) != q
        relevant = labels[others] == labels[q]
        if not relevant.any():
            continue
        aps.append(average_precision_score(relevant, scores[q, others]))
        hits.append(relevant[np.argmax(scores[q, others])])
    assert record["metrics"][C.METRIC_MAP] == pytest.approx(np.mean(aps), abs=1e-5)
    assert record["metrics"][C.recall_at(1)] == pytest.approx(np.mean(hits), abs=1e-6)
    assert record["split"] == C.SPLIT_UNSEEN and record["centred_on"] == C.SPLIT_TRAIN
    assert len(record["pr_curve"]["recall"]) == len(record["pr_curve"]["precision"]) > 1
    # The synthetic chips carry length/width: their ranking by pixel distance sits beside retrieval,
    # measured as the models' evaluation measures it (on the normalised features).
    attributes = attribute_matrix(load_split(open_version(manifest), C.SPLIT_UNSEEN).metas)
    assert attributes is not None
    expected = attribute_ranking_metrics(features, attributes)
    assert expected and all(record["metrics"][name] == pytest.approx(value, abs=1e-5) for name, value in expected.items())
    # And retrieval at the superclass level: sklearn's AP with "same superclass" as relevance.
    coarse = np.array([m[C.SUPERCLASS] for m in load_split(open_version(manifest), C.SPLIT_UNSEEN).metas])
    coarse_aps = []
    for q in range(len(coarse)):
        others = np.arange(len(coarse)) != q
        if (coarse[others] == coarse[q]).any():
            coarse_aps.append(average_precision_score(coarse[others] == coarse[q], scores[q, others]))
    assert record["metrics"]["coarse_mAP"] == pytest.approx(np.mean(coarse_aps), abs=1e-5)


def test_baseline_is_measured_once_and_logged_once_per_experiment(tiny_dataset, tmp_path):
    root, manifest = tiny_dataset
    config = load_config(None, ["data=synthetic_tiny", f"storage.root={root}", f"train.dataset={manifest}",
                                f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "tracking.experiment=baseline-test"])
    context = StageContext(config, Console(quiet=True))
    first = evaluate_baseline(context, (1, 2))
    again = evaluate_baseline(StageContext(config, Console(quiet=True)), (1, 2))
    assert again.skipped and again.run_id == first.run_id and again.metrics == first.metrics
    table = comparison_table(context.tracking_uri, "baseline-test")
    assert list(table["run"]) == [BASELINE_NAME]
    row = table.iloc[0]
    assert row[C.METRIC_MAP] == pytest.approx(first.metrics[C.METRIC_MAP])
    assert math.isnan(row["train_seconds"]) and math.isnan(row["epochs"]) and math.isnan(row[C.METRIC_ACCURACY])
    printed = display_rows(table)[0]
    assert printed[:5] == [BASELINE_NAME, "-", "-", "-", "-"] and printed[5].endswith(" %")
