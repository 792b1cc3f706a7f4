"""One layout names every output; `reuse_when_complete` is the one "skip when done" check."""

from __future__ import annotations

import pytest

from components import constants as C
from components.storage import Layout, Store, reuse_when_complete


def test_dataset_paths_are_the_ones_published_versions_have():
    # The data package writes and reads through these (components/data/versions.py, shards.py).
    assert Layout.manifest("cars", "abc") == "datasets/cars/abc/manifest.json"
    assert Layout.latest("cars") == "datasets/cars/LATEST.json"
    assert Layout.dataset_versions("cars") == "datasets/cars"
    assert Layout.shard("train", "00ff") == "shards/train-00ff.tar"


def test_run_paths_hold_model_result_evaluations_and_indexes():
    run = Layout.run("cars", "v1", "warp-0123")
    assert run.folder == "runs/cars/v1/warp-0123"
    assert (run.model, run.result) == ("runs/cars/v1/warp-0123/model", "runs/cars/v1/warp-0123/result.json")
    assert run.evaluation("feed") == "runs/cars/v1/warp-0123/evaluation-feed.json"
    assert run.index("IVF1024,Flat", 2) == "indexes/cars/v1/warp-0123/IVF1024_Flat-2"
    sweep = Layout.sweep("lr", "k1")
    assert (sweep.result, sweep.best_config) == ("tune/lr/k1/result.json", "tune/lr/k1/best.yaml")
    assert sweep.trial_model("t_0001") == "tune/lr/k1/trials/t_0001/model"
    assert Layout.compare("exp", "csv") == "compare/exp.csv"


def test_release_paths_are_the_ones_the_release_package_writes():
    from components.release import live, lock

    assert Layout.live_index("cars") == live.pointer_path("cars")
    assert Layout.lock_claims("retrain").startswith(f"{lock.LOCKS_DIR}/")


@pytest.mark.parametrize("root", ["/data/chipmatch", "s3://bucket/prefix"])
def test_a_manifest_uri_splits_back_into_root_and_path(root, tmp_path):
    relative = Layout.manifest("cars", "v1")
    uri = f"{root}/{relative}"
    assert Layout.split_manifest_uri(uri) == (root, relative)
    assert Layout.split_manifest_uri(uri.rsplit("/", 1)[0] + "/") == (root, relative)   # the version folder
    with pytest.raises(ValueError, match=f"datasets/<name>/<version>/{C.MANIFEST_FILENAME}"):
        Layout.split_manifest_uri(f"{root}/runs/cars/v1")


def test_reuse_when_complete_reads_the_marker_and_writes_nothing(tmp_path):
    store = Store(str(tmp_path))
    marker = Layout.run("cars", "v1", "k").result
    assert reuse_when_complete(store, marker) is None
    store.write_json(marker, {"model_uri": "m", "inputs": "same"})
    before = {p: (tmp_path / p).stat().st_mtime_ns for p in store.list(recursive=True)}
    assert reuse_when_complete(store, marker) == {"model_uri": "m", "inputs": "same"}
    assert reuse_when_complete(store, marker, accept=lambda data: data["inputs"] == "other") is None   # stale
    assert {p: (tmp_path / p).stat().st_mtime_ns for p in store.list(recursive=True)} == before
