"""Sharded FAISS index: exact equivalences, recall of approximate types, filters, round trip."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from components.index import IndexSearcher, SearchFilter, build_index, merge_top_k
from components.index.manifest import INDEX_MANIFEST_FILENAME, IndexManifest
from components.index.search import faiss_has_gpu


def clustered(n: int, dim: int, seed: int, classes: int = 200, noise: float = 1.5) -> np.ndarray:
    """Points around class centres, like embeddings; queries come from the same distribution."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim))
    return (centres[rng.integers(0, classes, n)] + noise * rng.standard_normal((n, dim))).astype(np.float32)


def keys_only(n: int) -> pd.DataFrame:
    return pd.DataFrame({"key": [f"chip-{i:06d}" for i in range(n)]})


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray | None = None):
    """Exact top-k ids by (inner product of unit vectors desc, id asc), over allowed ids."""
    scores = unit(queries) @ unit(vectors).T
    ids = np.arange(vectors.shape[0])
    if allowed is not None:
        scores, ids = scores[:, allowed], ids[allowed]
    order = np.lexsort((np.broadcast_to(ids, scores.shape), -scores.astype(np.float64)), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, 1), ids[order]


def recall(expected: np.ndarray, got: np.ndarray) -> float:
    """Mean fraction of each row's exact top-k found in the approximate top-k."""
    return float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(expected, got)]))


def test_sharded_flat_equals_unsharded_flat_exactly_with_ties(tmp_path):
    vectors = clustered(3000, 32, seed=0)
    vectors[[10, 1200, 2999, 2400]] = vectors[5]  # duplicates in several shards: score ties
    queries = np.concatenate([clustered(50, 32, seed=1), vectors[[5]]])
    build_index(vectors, keys_only(3000), str(tmp_path / "one"), factory="Flat")
    build_index(vectors, keys_only(3000), str(tmp_path / "three"), factory="Flat", num_shards=3)
    one = IndexSearcher.load(str(tmp_path / "one")).search_arrays(queries, 20)
    three = IndexSearcher.load(str(tmp_path / "three")).search_arrays(queries, 20)
    np.testing.assert_array_equal(one[1], three[1])
    np.testing.assert_array_equal(one[0], three[0])
    assert list(three[1][-1, :5]) == [5, 10, 1200, 2400, 2999]  # ties: ascending id
    expected_scores, expected_ids = brute_force(vectors, queries, 20)
    np.testing.assert_array_equal(three[1], expected_ids)
    np.testing.assert_allclose(three[0], expected_scores, atol=1e-5)


def test_ivf_with_every_list_probed_is_exact(tmp_path):
    vectors, queries = clustered(4000, 32, seed=2), clustered(40, 32, seed=3)
    build_index(vectors, keys_only(4000), str(tmp_path / "ivf"), factory="IVF32,Flat", num_shards=2, train_size=2000)
    got = IndexSearcher.load(str(tmp_path / "ivf")).search_arrays(queries, 10, nprobe=32)[1]
    np.testing.assert_array_equal(got, brute_force(vectors, queries, 10)[1])


@pytest.mark.parametrize("factory, bound", [("IVF256,Flat", 0.90), ("IVF256,SQ8", 0.88)])
def test_ivf_recall_at_10_against_flat(tmp_path, factory, bound):
    data = clustered(20_300, 64, seed=4)
    vectors, queries = data[:20_000], data[20_000:]
    manifest = build_index(vectors, keys_only(20_000), str(tmp_path / "ivf"), factory=factory, num_shards=2,
                           train_size=10_000, seed=7, nprobe=16)
    assert manifest.search_defaults == {"nprobe": 16} and manifest.train_size == 10_000
    searcher = IndexSearcher.load(str(tmp_path / "ivf"))
    expected = brute_force(vectors, queries, 10)[1]
    found = recall(expected, searcher.search_arrays(queries, 10)[1])
    assert found >= bound, f"{factory} recall@10 {found:.3f} < {bound}"
    assert recall(expected, searcher.search_arrays(queries, 10, nprobe=1)[1]) < found


def test_hnsw_recall_at_10_against_flat(tmp_path):
    data = clustered(5_300, 64, seed=5)
    vectors, queries = data[:5_000], data[5_000:]
    build_index(vectors, keys_only(5_000), str(tmp_path / "hnsw"), factory="HNSW16", num_shards=2, ef_search=64)
    got = IndexSearcher.load(str(tmp_path / "hnsw")).search_arrays(queries, 10)[1]
    assert recall(brute_force(vectors, queries, 10)[1], got) >= 0.95


def test_tiny_ivf_pq_builds_and_searches(tmp_path):
    vectors = clustered(2000, 32, seed=6)
    # 4-bit codes (16 centroids per sub-quantiser) keep training fast.
    build_index(vectors, keys_only(2000), str(tmp_path / "pq"), factory="IVF16,PQ8x4", train_size=2000)
    scores, ids = IndexSearcher.load(str(tmp_path / "pq")).search_arrays(vectors[:20], 5, nprobe=16)
    assert ids.shape == (20, 5) and (ids >= 0).all()
    assert recall(brute_force(vectors, vectors[:20], 5)[1], ids) > 0.3  # coarse codes, still informative


def test_save_load_round_trip_and_manifest(tmp_path):
    vectors = clustered(1500, 16, seed=8)
    metadata = keys_only(1500).assign(label=np.arange(1500) % 7)
    manifest = build_index(vectors, metadata, str(tmp_path / "idx"), factory="IVF8,Flat", num_shards=3,
                           train_size=1000, model_run_id="run-42", dataset_version="v3", nprobe=4)
    files = sorted(os.listdir(tmp_path / "idx"))
    assert files == ["index.json", "metadata.parquet"] + [f"shard-0000{i}-of-00003.faiss" for i in range(3)]
    loaded = IndexManifest.from_dict(__import__("json").loads((tmp_path / "idx" / INDEX_MANIFEST_FILENAME).read_text()))
    assert loaded == manifest
    assert (loaded.model_run_id, loaded.dataset_version) == ("run-42", "v3")
    assert (loaded.dim, loaded.metric) == (16, "inner_product")
    assert sum(shard.count for shard in loaded.shards) == 1500
    first = IndexSearcher.load(str(tmp_path / "idx"))
    second = IndexSearcher.load(str(tmp_path / "idx"))
    for a, b in zip(first.search_arrays(vectors[:30], 8), second.search_arrays(vectors[:30], 8)):
        np.testing.assert_array_equal(a, b)
    table = first.search(vectors[:2], 3)[0]
    assert list(table.columns) == ["rank", "id", "score", "key", "label"]
    assert table["key"][0] == "chip-000000" and table["rank"].tolist() == [1, 2, 3]


def test_index_directory_given_as_a_file_uri(tmp_path):
    vectors = clustered(500, 8, seed=17)
    uri = (tmp_path / "by-uri").as_uri()  # file:///...: the pyarrow filesystem path of s3:// / gs://
    build_index(vectors, keys_only(500), uri, factory="Flat", num_shards=2)
    got = IndexSearcher.load(uri).search_arrays(vectors[:4], 3)[1]
    np.testing.assert_array_equal(got, brute_force(vectors, vectors[:4], 3)[1])


def test_rebuild_with_the_same_inputs_changes_no_file(tmp_path):
    vectors = clustered(800, 8, seed=9)
    out = str(tmp_path / "idx")
    first = build_index(vectors, keys_only(800), out, factory="Flat", num_shards=2)
    stamps = {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in os.listdir(out)}
    again = build_index(vectors, keys_only(800), out, factory="Flat", num_shards=2)
    assert again == first
    assert {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in os.listdir(out)} == stamps
    changed = build_index(vectors * 2 + 1, keys_only(800), out, factory="Flat", num_shards=2)
    assert changed.inputs_sha256 != first.inputs_sha256


def test_corrupt_shard_is_detected(tmp_path):
    out = tmp_path / "idx"
    manifest = build_index(clustered(300, 8, seed=10), keys_only(300), str(out), factory="Flat")
    shard = out / manifest.shards[0].file
    payload = bytearray(shard.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    shard.write_bytes(bytes(payload))
    with pytest.raises(ValueError, match="sha256 differs"):
        IndexSearcher.load(str(out))


def test_shards_are_built_through_the_given_map_function(tmp_path):
    calls = []

    def map_shards(function, tasks):
        calls.append(len(tasks))
        return [function(*task) for task in reversed(tasks)][::-1]

    vectors = clustered(600, 8, seed=11)
    build_index(vectors, keys_only(600), str(tmp_path / "idx"), factory="Flat", num_shards=4, map_shards=map_shards)
    assert calls == [4]
    got = IndexSearcher.load(str(tmp_path / "idx")).search_arrays(vectors[:5], 3)[1]
    np.testing.assert_array_equal(got, brute_force(vectors, vectors[:5], 3)[1])


@pytest.fixture(scope="module")
def geo_index(tmp_path_factory):
    rng = np.random.default_rng(12)
    n = 3000
    vectors = clustered(n, 16, seed=13)
    metadata = pd.DataFrame({
        "key": [f"chip-{i}" for i in range(n)],
        "label": rng.choice(["tank", "truck", "car", "ship"], n),
        "lon": rng.uniform(-180, 180, n),
        "lat": rng.uniform(-60, 60, n),
        "time": pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 365, n), unit="D"),
        "scene_id": rng.choice([f"scene-{s}" for s in range(12)], n),
    })
    metadata.loc[::50, "lon"] = np.nan  # rows without a position never pass a bbox
    out = str(tmp_path_factory.mktemp("geo") / "idx")
    build_index(vectors, metadata, out, factory="Flat", num_shards=3)
    return vectors, metadata, out


FILTERS = {
    "labels": SearchFilter(labels={"tank", "ship"}),
    "bbox": SearchFilter(bbox=(-30.0, -20.0, 60.0, 40.0)),
    "antimeridian": SearchFilter(bbox=(150.0, -60.0, -150.0, 60.0)),
    "time": SearchFilter(time_range=("2024-03-01", "2024-05-31")),
    "open-ended time": SearchFilter(time_range=(None, pd.Timestamp("2024-02-01", tz="UTC"))),
    "scenes": SearchFilter(scene_ids={"scene-1", "scene-7"}),
    "combined": SearchFilter(labels={"car"}, bbox=(-180.0, 0.0, 180.0, 60.0),
                             scene_ids={"scene-2", "scene-3", "scene-4"}),
}


def expected_mask(metadata: pd.DataFrame, name: str) -> np.ndarray:
    lon, lat, time = metadata["lon"], metadata["lat"], metadata["time"]
    return {
        "labels": metadata["label"].isin(["tank", "ship"]),
        "bbox": lon.between(-30, 60) & lat.between(-20, 40),
        "antimeridian": ((lon >= 150) | (lon <= -150)) & lat.between(-60, 60),
        "time": time.between(pd.Timestamp("2024-03-01", tz="UTC"), pd.Timestamp("2024-05-31", tz="UTC")),
        "open-ended time": time <= pd.Timestamp("2024-02-01", tz="UTC"),
        "scenes": metadata["scene_id"].isin(["scene-1", "scene-7"]),
        "combined": (metadata["label"] == "car") & lat.between(0, 60) & lon.notna()
        & metadata["scene_id"].isin(["scene-2", "scene-3", "scene-4"]),
    }[name].to_numpy()


@pytest.mark.parametrize("name", list(FILTERS))
def test_filtered_flat_search_equals_brute_force_on_the_subset(geo_index, name):
    vectors, metadata, out = geo_index
    searcher = IndexSearcher.load(out, device="cpu")
    queries = vectors[:25] + 0.1
    allowed = np.flatnonzero(expected_mask(metadata, name))
    scores, ids = searcher.search_arrays(queries, 15, search_filter=FILTERS[name])
    expected_scores, expected_ids = brute_force(vectors, queries, 15, allowed)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


def test_filter_leaving_fewer_than_k_items_pads_and_returns_short_tables(geo_index):
    vectors, metadata, out = geo_index
    searcher = IndexSearcher.load(out)
    only = SearchFilter(labels={"tank"}, scene_ids={"scene-5"}, time_range=("2024-01-01", "2024-02-15"))
    allowed = np.flatnonzero(only.mask(metadata))
    assert 0 < allowed.size < 10
    scores, ids = searcher.search_arrays(vectors[:3], 10, search_filter=only)
    assert set(ids[0][ids[0] >= 0]) == set(allowed) and (ids[:, allowed.size:] == -1).all()
    tables = searcher.search(vectors[:3], 10, search_filter=only)
    assert [len(table) for table in tables] == [allowed.size] * 3
    assert set(tables[0]["label"]) == {"tank"} and set(tables[0]["scene_id"]) == {"scene-5"}
    empty = searcher.search(vectors[:1], 5, search_filter=SearchFilter(labels={"submarine"}))
    assert len(empty[0]) == 0


def test_filtered_hnsw_returns_only_allowed_items(geo_index, tmp_path):
    vectors, metadata, _ = geo_index
    build_index(vectors, metadata, str(tmp_path / "hnsw"), factory="HNSW16", num_shards=2)
    searcher = IndexSearcher.load(str(tmp_path / "hnsw"))
    tables = searcher.search(vectors[:10], 10, search_filter=FILTERS["labels"], ef_search=128)
    assert all(set(table["label"]) <= {"tank", "ship"} and len(table) == 10 for table in tables)


def test_merge_top_k_orders_by_score_then_id():
    scores = np.array([[0.5, 0.9, 0.5, -3.4e38], [0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    ids = np.array([[7, 3, 2, -1], [1, 2, 3, 4]])
    merged_scores, merged_ids = merge_top_k(scores, ids, 4)
    assert merged_ids.tolist() == [[3, 2, 7, -1], [4, 3, 2, 1]]
    assert np.isneginf(merged_scores[0, 3])


@pytest.mark.parametrize("factory", ["IVFx,Flat", "HNSWx", "Bogus42", "IVF16,PQ7"])
def test_bad_factory_string_is_a_value_error_naming_it(tmp_path, factory):
    with pytest.raises(ValueError, match=f"index factory string {factory!r}"):
        build_index(clustered(100, 16, seed=14), keys_only(100), str(tmp_path / "x"), factory=factory)
    assert not (tmp_path / "x").exists()


def test_bad_build_and_search_inputs(tmp_path):
    vectors = clustered(100, 8, seed=15)
    with pytest.raises(ValueError, match="'key' column"):
        build_index(vectors, pd.DataFrame({"name": range(100)}), str(tmp_path / "a"), factory="Flat")
    with pytest.raises(ValueError, match="metadata has 99 rows"):
        build_index(vectors, keys_only(99), str(tmp_path / "a"), factory="Flat")
    with pytest.raises(ValueError, match="ids must be unique"):
        build_index(vectors, keys_only(100), str(tmp_path / "a"), factory="Flat", ids=np.zeros(100, int))
    with pytest.raises(ValueError, match="num_shards"):
        build_index(vectors, keys_only(100), str(tmp_path / "a"), factory="Flat", num_shards=0)
    with pytest.raises(ValueError, match="IDMap"):
        build_index(vectors, keys_only(100), str(tmp_path / "a"), factory="IDMap,Flat")
    build_index(vectors, keys_only(100), str(tmp_path / "ok"), factory="Flat")
    searcher = IndexSearcher.load(str(tmp_path / "ok"))
    with pytest.raises(ValueError, match="dimension 4, the index has 8"):
        searcher.search_arrays(np.ones((2, 4)), 5)
    with pytest.raises(ValueError, match="k must be a positive int"):
        searcher.search_arrays(vectors[:1], 0)
    with pytest.raises(ValueError, match="metadata column 'lon'"):
        searcher.search_arrays(vectors[:1], 5, search_filter=SearchFilter(bbox=(0, 0, 1, 1)))
    with pytest.raises(TypeError, match="single string"):
        SearchFilter(labels="tank")
    with pytest.raises(FileNotFoundError, match="not an index directory"):
        IndexSearcher.load(str(tmp_path / "nothing"))


def test_custom_ids_map_back_to_their_metadata_rows(tmp_path):
    vectors = clustered(400, 8, seed=16)
    ids = np.arange(400) * 10 + 1000
    build_index(vectors, keys_only(400), str(tmp_path / "idx"), factory="Flat", num_shards=2, ids=ids)
    table = IndexSearcher.load(str(tmp_path / "idx")).search(vectors[[37]], 1)[0]
    assert table["id"][0] == 1370 and table["key"][0] == "chip-000037"


@pytest.mark.gpu
@pytest.mark.skipif(not faiss_has_gpu(), reason="needs faiss's GPU build (the `gpu` extra) and a GPU")
def test_gpu_search_equals_cpu_search(geo_index):
    vectors, _, out = geo_index
    cpu = IndexSearcher.load(out, device="cpu").search_arrays(vectors[:50], 10)
    gpu = IndexSearcher.load(out, device="cuda").search_arrays(vectors[:50], 10)
    np.testing.assert_array_equal(cpu[1], gpu[1])
    np.testing.assert_allclose(cpu[0], gpu[0], atol=1e-5)
