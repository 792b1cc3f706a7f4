"""Sharding through faiss: sharded equals unsharded, IndexShards for graph indexes, the
faiss.ResultHeap merge against a sorting loop, the fallback for indexes without selectors,
and the package's import rule."""

from __future__ import annotations

import ast
import pathlib

import faiss
import numpy as np
import pandas as pd
import pytest

from components.index import IndexSearcher, SearchFilter, build_index, merge_top_k
from components.index.search import MERGED, SHARDS
from tests.index.test_index_search import brute_force, clustered, recall


def labelled(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"key": [f"chip-{i:06d}" for i in range(n)], "label": rng.choice(list("abcde"), n)})


def python_top_k(scores: np.ndarray, ids: np.ndarray, k: int):
    """Slow reference: each row's (score desc, id asc) order by Python's sort, -1 ids dropped."""
    rows = []
    for row_scores, row_ids in zip(scores, ids):
        pairs = sorted((-float(s), int(i)) for s, i in zip(row_scores, row_ids) if i >= 0)[:k]
        rows.append(pairs + [(np.inf, -1)] * (k - len(pairs)))
    return -np.array([[s for s, _ in row] for row in rows]), np.array([[i for _, i in row] for row in rows])


@pytest.fixture(scope="module")
def ivf_data():
    data = clustered(8_050, 32, seed=20, classes=100)
    return data[:8_000], data[8_000:], labelled(8_000, seed=21)


# recall@10 bound against exact search at nprobe 16 (4-bit PQ codes are coarse).
@pytest.mark.parametrize("factory, bound", [("IVF64,Flat", 0.85), ("IVF64,SQ8", 0.85), ("IVF32,PQ8x4", 0.2)])
def test_sharded_ivf_equals_unsharded_ivf_at_the_same_nprobe(tmp_path, ivf_data, factory, bound):
    vectors, queries, metadata = ivf_data
    options = dict(factory=factory, train_size=4_000, seed=3)
    build_index(vectors, metadata, str(tmp_path / "one"), num_shards=1, **options)
    build_index(vectors, metadata, str(tmp_path / "four"), num_shards=4, **options)
    one, four = IndexSearcher.load(str(tmp_path / "one")), IndexSearcher.load(str(tmp_path / "four"))
    # One IVF index over every shard: the coarse quantizer (trained once) runs once per query.
    assert four.layout == MERGED and faiss.extract_index_ivf(four.index).ntotal == 8_000
    only = SearchFilter(labels={"a", "c"})
    for nprobe in (1, 4, 16):
        for search_filter in (None, only):
            expected = one.search_arrays(queries, 10, nprobe=nprobe, search_filter=search_filter)
            got = four.search_arrays(queries, 10, nprobe=nprobe, search_filter=search_filter)
            np.testing.assert_array_equal(got[1], expected[1])
            np.testing.assert_array_equal(got[0], expected[0])
    assert recall(brute_force(vectors, queries, 10)[1], four.search_arrays(queries, 10, nprobe=16)[1]) >= bound
    allowed = np.flatnonzero(only.mask(metadata))
    got = four.search_arrays(queries, 10, nprobe=64, search_filter=only)[1]
    assert np.isin(got, allowed).all()
    exact = brute_force(vectors, queries, 10, allowed)[1]
    if factory == "IVF64,Flat":  # every list probed, exact distances: exact search
        np.testing.assert_array_equal(got, exact)
    else:
        assert recall(exact, got) >= bound


def test_sharded_flat_equals_unsharded_flat_with_filters(tmp_path, ivf_data):
    vectors, queries, metadata = ivf_data
    build_index(vectors, metadata, str(tmp_path / "one"), factory="Flat")
    build_index(vectors, metadata, str(tmp_path / "five"), factory="Flat", num_shards=5)
    one, five = IndexSearcher.load(str(tmp_path / "one")), IndexSearcher.load(str(tmp_path / "five"))
    assert five.layout == MERGED and five.index.ntotal == 8_000
    only = SearchFilter(labels={"b"})
    for search_filter, allowed in ((None, None), (only, np.flatnonzero(only.mask(metadata)))):
        expected = one.search_arrays(queries, 12, search_filter=search_filter)
        got = five.search_arrays(queries, 12, search_filter=search_filter)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[0], expected[0])
        exact_scores, exact_ids = brute_force(vectors, queries, 12, allowed)
        np.testing.assert_array_equal(got[1], exact_ids)
        np.testing.assert_allclose(got[0], exact_scores, atol=1e-5)


def test_graph_shards_are_searched_by_faiss_index_shards(tmp_path):
    vectors, queries = clustered(3_000, 16, seed=22), clustered(30, 16, seed=23)
    metadata = labelled(3_000, seed=24)
    manifest = build_index(vectors, metadata, str(tmp_path / "hnsw"), factory="HNSW16", num_shards=3, ef_search=32)
    searcher = IndexSearcher.load(str(tmp_path / "hnsw"))
    assert searcher.layout == SHARDS and searcher.index.count() == 3
    # Reference: each shard file searched on its own by faiss, merged by a sorting loop.
    shards = [faiss.read_index(str(tmp_path / "hnsw" / entry.file)) for entry in manifest.shards]
    for shard in shards:
        faiss.downcast_index(faiss.downcast_index(shard).index).hnsw.efSearch = 32
    parts = [shard.search(queries / np.linalg.norm(queries, axis=1, keepdims=True), 10) for shard in shards]
    expected = python_top_k(np.hstack([p[0] for p in parts]), np.hstack([p[1] for p in parts]), 10)
    got = searcher.search_arrays(queries, 10)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[0], expected[0], atol=1e-6)
    assert recall(brute_force(vectors, queries, 10)[1], got[1]) >= 0.9
    tables = searcher.search(queries, 10, search_filter=SearchFilter(labels={"d"}), ef_search=64)
    assert all(set(table["label"]) == {"d"} and len(table) == 10 for table in tables)
    no_queries = searcher.search_arrays(np.zeros((0, 16)), 10, search_filter=SearchFilter(labels={"d"}))
    assert no_queries[0].shape == no_queries[1].shape == (0, 10)


def test_index_that_rejects_selectors_is_filtered_by_over_fetching(tmp_path):
    vectors, queries = clustered(3_000, 16, seed=25), clustered(20, 16, seed=26)
    metadata = labelled(3_000, seed=27)
    # A refine index takes only its own parameter type: a selector makes faiss raise.
    build_index(vectors, metadata, str(tmp_path / "refine"), factory="SQ8,RFlat", num_shards=2)
    searcher = IndexSearcher.load(str(tmp_path / "refine"))
    only = SearchFilter(labels={"e"})
    allowed = np.flatnonzero(only.mask(metadata))
    scores, ids = searcher.search_arrays(queries, 10, search_filter=only)
    assert np.isin(ids, allowed).all()
    exact_scores, exact_ids = brute_force(vectors, queries, 10, allowed)
    assert recall(exact_ids, ids) >= 0.95
    unit_vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    unit_queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    true_scores = np.einsum("qd,qkd->qk", unit_queries, unit_vectors[ids])  # RFlat re-ranks exactly
    np.testing.assert_allclose(scores, true_scores, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 8, 20])
def test_merge_top_k_equals_a_sorting_loop_with_many_ties(k):
    rng = np.random.default_rng(k)
    scores = rng.integers(0, 4, size=(200, 12)).astype(np.float32) / 4  # many exact ties
    ids = np.stack([rng.permutation(1_000)[:12] for _ in range(200)])
    ids[rng.random(ids.shape) < 0.15] = -1  # no result in these places
    expected_scores, expected_ids = python_top_k(scores, ids, k)
    got_scores, got_ids = merge_top_k(scores, ids, k)
    np.testing.assert_array_equal(got_ids, expected_ids)
    np.testing.assert_array_equal(got_scores, expected_scores.astype(np.float32))


def test_index_package_imports_no_training_or_evaluation_code():
    """The package contract (components/index/__init__.py): faiss, storage, constants, errors, lazy."""
    allowed = ("components.index", "components.constants", "components.storage", "components.errors", "components.lazy")
    root = pathlib.Path(__file__).resolve().parents[2] / "components" / "index"
    for path in sorted(root.glob("*.py")):
        if path.name == "embedding.py":  # moving to components.inference (issue 8); not this contract
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name.startswith("components"):
                    assert name.startswith(allowed), f"{path.name} imports {name}"
