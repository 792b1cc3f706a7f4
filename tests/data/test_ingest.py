"""The ingest stage end to end on a real (shared) Ray session and real WebDataset tars."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from components import constants as C
from components.data.ingest import FAULT_ENV, ImageSpec, ingest
from components.data.reader import iter_samples, load_split
from components.data.sample_index import build_sample_index, sample_index_path
from components.data.sources.fashion_mnist import CLASS_NAMES, DEBIAN_ROOT, FashionMnistConfig, FashionMnistSource, load_subset
from components.data.sources.folder import FolderConfig, FolderSource
from components.data.splits import SplitSpec
from components.data.versions import list_versions, open_version, retrieval_split
from components.storage import Store
from tests.data.images import png_bytes, write_folder_dataset

pytestmark = pytest.mark.usefixtures("ray_session")


def run_folder(root: Path, store_root: Path, samples_per_shard: int = 20, **split):
    source = FolderSource(FolderConfig(root=str(root), name="cars"))
    return ingest(source, Store(str(store_root)), ImageSpec(size=16, channels=1), SplitSpec(**split), samples_per_shard)


def all_files(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.mark.skipif(not Path(DEBIAN_ROOT, "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_round_trip(tmp_path):
    source = FashionMnistSource(FashionMnistConfig(subset="test"))
    result = ingest(source, Store(str(tmp_path)), ImageSpec(size=None, channels=1), SplitSpec(seed=0), 1000)
    images, labels = load_subset(DEBIAN_ROOT, "test")
    counts_in = Counter(CLASS_NAMES[int(label)] for label in labels)
    counts = result.manifest["counts"]
    counts_out = Counter({name: sum(counts[s].get(name, 0) for s in C.SPLITS) for name in CLASS_NAMES})
    assert counts_out == counts_in
    assert result.manifest["summary"]["rejected"] == 0
    # Every pixel comes back: PNG is lossless and the chips keep their native 28×28.
    version = open_version(result.manifest_uri)
    seen = 0
    for split in C.SPLITS:
        for sample in iter_samples(version, split):
            index = int(sample.key.split("/")[1])
            assert np.array_equal(sample.image, images[index])
            assert sample.label == CLASS_NAMES[int(labels[index])]
            seen += 1
    assert seen == len(labels)


def test_bad_inputs_are_recorded_with_reasons(tmp_path):
    root = tmp_path / "chips"
    write_folder_dataset(root, {"sedan": 6, "van": 6, "truck": 6, "bus": 6, "suv": 6})
    good = png_bytes(999, 16)
    (root / "sedan" / "truncated.png").write_bytes(good[: len(good) // 2])
    corrupt = bytearray(good)
    corrupt[60:80] = b"\x00" * 20
    (root / "sedan" / "corrupt.png").write_bytes(bytes(corrupt))
    (root / "van" / "notes.png").write_bytes(b"plain text, not an image")
    (root / "van" / "clip.gif").write_bytes(b"GIF89a")
    (root / "truck" / "empty.png").write_bytes(b"")
    os.symlink(tmp_path / "missing.png", root / "truck" / "dangling.png")
    (root / "loose.png").write_bytes(png_bytes(5, 16))
    twin = png_bytes(7777, 16)
    (root / "bus" / "twin.png").write_bytes(twin)
    (root / "suv" / "twin.png").write_bytes(twin)
    (root / "bus" / "copy_a.png").write_bytes(png_bytes(8888, 16))
    (root / "bus" / "copy_b.png").write_bytes(png_bytes(8888, 16))

    result = run_folder(root, tmp_path / "store", seen_fraction=0.6)
    by_source = {r[C.SOURCE]: r["reason"] for r in result.manifest["rejections"]}
    assert by_source == {
        "sedan/truncated.png": C.REJECT_TRUNCATED,
        "sedan/corrupt.png": by_source["sedan/corrupt.png"],
        "van/notes.png": C.REJECT_UNKNOWN_FORMAT,
        "van/clip.gif": C.REJECT_UNKNOWN_FORMAT,
        "truck/empty.png": C.REJECT_EMPTY,
        "truck/dangling.png": C.REJECT_UNREADABLE,
        "loose.png": C.REJECT_MISSING_LABEL,
        "bus/twin.png": C.REJECT_CONFLICTING_LABELS,
        "suv/twin.png": C.REJECT_CONFLICTING_LABELS,
        "bus/copy_b.png": C.REJECT_DUPLICATE,
    }
    assert by_source["sedan/corrupt.png"] in (C.REJECT_CORRUPT, C.REJECT_TRUNCATED)
    summary = result.manifest["summary"]
    assert summary["accepted"] == 31 and summary["rejected"] == 10
    assert summary["inputs"] == summary["accepted"] + summary["rejected"]
    assert sum(summary["samples_by_split"].values()) == 31


def test_rerun_writes_nothing_and_returns_the_same_version(tmp_path):
    write_folder_dataset(tmp_path / "chips", {f"c{i}": 8 for i in range(6)})
    first = run_folder(tmp_path / "chips", tmp_path / "store")
    files = all_files(tmp_path / "store")
    # The sample index is published with the version (training's ranged reads need it) and equals
    # a fresh scan of the shards.
    version = open_version(first.manifest_uri)
    index = pq.read_table(tmp_path / "store" / sample_index_path(version))
    assert index.equals(build_sample_index(version))
    manifest_bytes = Path(first.manifest_uri).read_bytes()
    second = run_folder(tmp_path / "chips", tmp_path / "store")
    assert first.created and not second.created
    assert second.version == first.version
    assert all_files(tmp_path / "store") == files
    assert Path(second.manifest_uri).read_bytes() == manifest_bytes


def test_crash_mid_write_publishes_nothing_and_rerun_completes(tmp_path, monkeypatch):
    write_folder_dataset(tmp_path / "chips", {f"c{i}": 10 for i in range(6)})
    store = tmp_path / "store"
    monkeypatch.setenv(FAULT_ENV, "mid_shard_write")
    with pytest.raises(Exception, match="injected fault"):
        run_folder(tmp_path / "chips", store)
    assert list_versions(Store(str(store)), "cars") == []
    assert not (store / "datasets").exists()
    assert any(".tmp-" in p.name for p in (store / "shards").iterdir())   # the debris is there

    monkeypatch.delenv(FAULT_ENV)
    resumed = run_folder(tmp_path / "chips", store)
    clean = run_folder(tmp_path / "chips", tmp_path / "clean")
    assert resumed.created and resumed.version == clean.version
    assert resumed.manifest["shards"] == clean.manifest["shards"]      # same names, bytes and sha256
    assert not any(".tmp-" in p.name for p in (store / "shards").iterdir())
    assert len(load_split(open_version(resumed.manifest_uri), C.SPLIT_UNSEEN).keys) > 0


def test_new_imagery_makes_a_new_version_reusing_unchanged_shards(tmp_path):
    chips = tmp_path / "chips"
    write_folder_dataset(chips, {f"c{i:02d}": 12 for i in range(10)})
    first = run_folder(chips, tmp_path / "store", samples_per_shard=8)
    write_folder_dataset(chips, {"c03": 14}, seed_offset=300_000)  # the same 12 images of c03 and 2 new ones
    write_folder_dataset(chips, {f"n{i}": 12 for i in range(3)}, seed_offset=5_000_000)  # 3 new classes
    second = run_folder(chips, tmp_path / "store", samples_per_shard=8)
    assert second.created and second.version != first.version
    assert second.manifest["parent"] == first.version
    assert second.shards_reused > 0 and second.shards_written > 0
    old, new = first.manifest["split"], second.manifest["split"]
    assert set(old["seen_classes"]) <= set(new["seen_classes"])
    assert set(old["unseen_classes"]) <= set(new["unseen_classes"])
    assert sorted(list_versions(Store(str(tmp_path / "store")), "cars")) == sorted([first.version, second.version])


@pytest.mark.parametrize("world_size,num_workers", [(1, 1), (1, 2), (1, 3), (2, 1), (3, 1), (2, 3)])
def test_reader_covers_every_sample_exactly_once(tmp_path_factory, world_size, num_workers):
    version = open_version(_small_version(tmp_path_factory))
    for split in C.SPLITS:
        keys = []
        for rank in range(world_size):
            for worker in range(num_workers):
                keys += [s.key for s in iter_samples(version, split, rank, world_size, worker, num_workers, decode=False)]
        assert len(keys) == len(set(keys)) == version.num_samples(split)
        assert sum(version.manifest["counts"][split].values()) == len(keys)


_VERSION_CACHE: dict[str, str] = {}


def _small_version(tmp_path_factory) -> str:
    if "uri" not in _VERSION_CACHE:
        root = tmp_path_factory.mktemp("reader")
        write_folder_dataset(root / "chips", {f"c{i:02d}": 9 for i in range(12)})
        _VERSION_CACHE["uri"] = run_folder(root / "chips", root / "store", samples_per_shard=6).manifest_uri
    return _VERSION_CACHE["uri"]


def test_sample_metadata_records_split_and_role(tmp_path_factory):
    version = open_version(_small_version(tmp_path_factory))
    arrays = load_split(version, C.SPLIT_UNSEEN)
    assert arrays.images.shape[1:] == (16, 16)
    assert {m[C.ROLE] for m in arrays.metas} == {C.ROLE_BOTH}
    assert [arrays.classes[i] for i in arrays.labels] == [m[C.LABEL] for m in arrays.metas]
    assert set(arrays.classes) == set(version.manifest["split"]["unseen_classes"])
    manifest = json.loads(Path(version.uri).read_text())
    assert manifest["schema_version"] == C.MANIFEST_SCHEMA_VERSION
    for shard in manifest["shards"]:
        data = version.store.read_bytes(shard["name"])
        import hashlib

        assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]


# --- protocol images ----------------------------------------------------------------------

def _splits_by_key(version) -> dict[str, str]:
    return {s.key: s.meta[C.SPLIT] for split in C.SPLITS for s in iter_samples(version, split, decode=False)}


def test_protocol_images_holds_out_images_of_every_class_stably(tmp_path):
    chips, store = tmp_path / "chips", tmp_path / "store"
    write_folder_dataset(chips, {f"c{i}": 12 for i in range(4)})
    first = run_folder(chips, store, protocol="images", test_fraction=0.3, seed=1)
    manifest = first.manifest
    assert manifest["protocol"] == C.PROTOCOL_IMAGES and retrieval_split(manifest) == C.SPLIT_TEST
    assert manifest["split"]["seen_classes"] == [f"c{i}" for i in range(4)] and manifest["split"]["unseen_classes"] == []
    version = open_version(first.manifest_uri)
    assert version.retrieval_split == C.SPLIT_TEST and version.classes(C.SPLIT_TEST) == version.classes(C.SPLIT_TRAIN)
    first_splits = _splits_by_key(version)
    assert set(first_splits.values()) <= {C.SPLIT_TRAIN, C.SPLIT_VAL, C.SPLIT_TEST}
    test_keys = {k for k, s in first_splits.items() if s == C.SPLIT_TEST}
    assert 0 < len(test_keys) < len(first_splits) and version.num_samples(C.SPLIT_TEST) == len(test_keys)
    test_counts = manifest["counts"][C.SPLIT_TEST]
    assert sum(test_counts.values()) == manifest["summary"]["samples_by_split"][C.SPLIT_TEST] == len(test_keys)
    # Test chips decode with label indices of the trained classes.
    arrays = load_split(version, C.SPLIT_TEST)
    assert [arrays.classes[i] for i in arrays.labels] == [m[C.LABEL] for m in arrays.metas]

    # New images of an old class and a new class: no existing image moves.
    write_folder_dataset(chips, {"c1": 16}, seed_offset=100_000)        # the same 12 images of c1, 4 new ones
    write_folder_dataset(chips, {"n0": 10}, seed_offset=5_000_000)
    second = run_folder(chips, store, protocol="images", test_fraction=0.3, seed=1)
    assert second.created and second.manifest["parent"] == first.version
    second_splits = _splits_by_key(open_version(second.manifest_uri))
    assert {k: second_splits[k] for k in first_splits} == first_splits
    assert "n0" in second.manifest["split"]["seen_classes"]


def test_protocol_is_part_of_the_version_id(tmp_path):
    write_folder_dataset(tmp_path / "chips", {f"c{i}": 8 for i in range(5)})
    classes = run_folder(tmp_path / "chips", tmp_path / "store")
    images = run_folder(tmp_path / "chips", tmp_path / "store", protocol="images")
    assert classes.version != images.version and images.created
    assert classes.manifest["protocol"] == C.PROTOCOL_CLASSES and retrieval_split(classes.manifest) == C.SPLIT_UNSEEN
    assert run_folder(tmp_path / "chips", tmp_path / "store", protocol="images").version == images.version


@pytest.mark.skipif(not Path(DEBIAN_ROOT, "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_protocol_images_on_fashion_mnist_retrieves_within_the_official_test_file(tmp_path):
    source = FashionMnistSource(FashionMnistConfig(limit=300))
    result = ingest(source, Store(str(tmp_path)), ImageSpec(size=None, channels=1),
                    SplitSpec(protocol="images", val_fraction=0.2, seed=0), 1000)
    rejected = {r["key"] for r in result.manifest["rejections"]}
    splits = _splits_by_key(open_version(result.manifest_uri))
    assert {k for k, s in splits.items() if s == C.SPLIT_TEST} == {f"test/{i:05d}" for i in range(300)} - rejected
    assert {k for k, s in splits.items() if s == C.SPLIT_VAL} and all(
        k.startswith("train/") for k, s in splits.items() if s == C.SPLIT_VAL)
    assert result.manifest["split"]["seen_classes"] == sorted(CLASS_NAMES)
    sample = next(iter_samples(open_version(result.manifest_uri), C.SPLIT_TEST))
    assert sample.meta["metadata"][C.SOURCE_SPLIT] == C.SPLIT_TEST
