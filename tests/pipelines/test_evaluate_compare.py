"""Train two tiny runs, evaluate them and compare them through MLflow (real Ray, real sqlite)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from components import constants as C
from pipelines.compare import run_compare
from pipelines.config import load_config
from pipelines.context import tracking_uri
from pipelines.evaluate import run_evaluate
from pipelines.train import run_train

pytestmark = pytest.mark.slow


def test_train_evaluate_compare(tiny_dataset, ray_session, tmp_path):
    root, manifest = tiny_dataset
    config = load_config(None, [
        f"storage.root={root}", f"train.dataset={manifest}", "data=synthetic_tiny", "model.embedding_dim=32",
        "train.epochs=1", "train.batches_per_epoch=3", "train.classes_per_batch=8", "train.images_per_class=4",
        "train.threads_per_worker=1", "tracking.experiment=compare-test",
        "runs=[{name: ce, loss: cross_entropy}, {name: warp, loss: warp, overrides: {init_from: ce, epochs: 1}}]",
    ])
    console = Console(stderr=True, quiet=True)
    runs = run_train(config, console)
    evaluated = run_evaluate(config, console, runs=runs)
    assert [e.name for e in evaluated] == ["ce", "warp", "raw_pixels"] and evaluated[-1].baseline
    baseline = evaluated[-1]
    assert set(baseline.metrics) >= {C.METRIC_MAP, C.recall_at(1), C.METRIC_MAP_AT_R}
    assert C.METRIC_ACCURACY not in baseline.metrics
    for run in evaluated[:-1]:
        metrics = run.metrics
        for key in (C.METRIC_MAP, C.METRIC_MAP_AT_R, C.recall_at(1), C.recall_at(32), f"penultimate.{C.METRIC_MAP}",
                    f"coarse_{C.METRIC_MAP}", f"coarse_{C.recall_at(1)}"):   # the synthetic chips have superclasses
            assert 0.0 <= metrics[key] <= 1.0, key
        assert 0.0 <= metrics[C.METRIC_ACCURACY] <= 1.0          # classifier losses report accuracy
        record = json.loads(Path(run.evaluation_uri).read_text())
        assert set(record["per_class_AP"]["embedding"]) <= set(json.loads(Path(manifest).read_text())["split"]["unseen_classes"])
    client = mlflow.tracking.MlflowClient(tracking_uri(config))
    artifacts = {a.path for a in client.list_artifacts(evaluated[0].run_id, "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/retrieval_grid.png", "evaluation/pr_curves.png"} <= artifacts
    grid = client.download_artifacts(evaluated[0].run_id, "evaluation/retrieval_grid.png", str(tmp_path))
    assert Image.open(grid).size[1] > 0
    # Re-running evaluation does no work.
    assert all(e.skipped for e in run_evaluate(config, console, runs=runs))

    report = run_compare(config, console, sort="mAP")
    rows = report["rows"]
    by_name = {r["run"]: r["mAP"] for r in rows}
    assert [r["run"] for r in rows] == sorted(by_name, key=lambda n: -by_name[n])
    assert {r["loss"] for r in rows} == {"cross_entropy", "warp", "-"}
    pixels = next(r for r in rows if r["run"] == "raw_pixels")   # the baseline row, the same images
    assert pixels["mAP"] == pytest.approx(baseline.metrics[C.METRIC_MAP]) and pixels["epochs"] == -1
    markdown = Path(report["markdown"]).read_text()
    assert "| run | loss | training time | epochs | classification accuracy | mAP | R@1 | MAP@R |" in markdown
    assert f"| raw_pixels | - | - | - | - | {100 * baseline.metrics[C.METRIC_MAP]:.2f} % |" in markdown
    assert Path(report["csv"]).read_text().startswith("run,loss,dataset_version,train_seconds,epochs,accuracy,mAP")

    # Index every split with the better run, then search by image file.
    from components.index import SearchFilter
    from pipelines.index import run_index
    from pipelines.search import run_search

    indexed = run_index(config.model_copy(update={"index": config.index.model_copy(update={"num_shards": 2})}),
                        console, runs=runs, metrics={e.name: e.metrics for e in evaluated})
    assert indexed["counts"]["vectors"] == sum(json.loads(Path(manifest).read_text())["summary"]["samples_by_split"].values())
    from components.data.reader import load_split
    from components.data.versions import open_version

    unseen = load_split(open_version(manifest), C.SPLIT_UNSEEN)
    chip_path = tmp_path / "query.png"
    Image.fromarray(unseen.images[0]).save(chip_path)
    found = run_search(indexed["index"], str(chip_path), None, 5, grid=str(tmp_path / "grid.png"))
    top = found["results"][0]
    assert top["key"] == unseen.keys[0] and top["score"] == pytest.approx(1.0, abs=1e-4)   # the chip itself
    assert Image.open(tmp_path / "grid.png").size[0] > 0
    other = sorted(set(unseen.classes) - {top["label"]})[0]
    filtered = run_search(indexed["index"], str(chip_path), None, 3, search_filter=SearchFilter(labels={other}))
    assert {r["label"] for r in filtered["results"]} == {other}

    # The same run indexed with its penultimate layer (index.tap): its own folder, its layer's
    # vectors (the model's own penultimate features, normalised), and query images embedded alike.
    from components.index import IndexSearcher
    from components.inference import embed_arrays, load_model

    chosen = next(run for run in runs if run.name == indexed["run"])
    layer = run_index(config.model_copy(update={"index": config.index.model_copy(update={"tap": "penultimate"})}),
                      console, runs=[chosen])
    assert layer["index"] != indexed["index"] and layer["index"].endswith("-penultimate") and layer["tap"] == "penultimate"
    assert json.loads(Path(layer["index"], "source.json").read_text())["tap"] == "penultimate"
    features = embed_arrays(load_model(chosen.model_uri), unseen.images[:4], taps=("penultimate",))["penultimate"]
    assert layer["metrics"]["dim"] == features.shape[1] != indexed["metrics"]["dim"]
    scores, ids = IndexSearcher.load(layer["index"]).search_arrays(features, 1)
    assert np.allclose(scores[:, 0], 1.0, atol=1e-4)   # each chip's own penultimate vector is in the index
    found = run_search(layer["index"], str(chip_path), None, 1)
    assert found["results"][0]["key"] == unseen.keys[0] and found["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
