"""Result rows of the search service (`ResultColumns`, Arrow columns gathered by position)
against `IndexSearcher.search`'s DataFrames (the reference) on a real FAISS index: the same
ids, order, scores and metadata, for ids that are not row positions, time columns, missing
values, and filters that leave fewer than k results."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from components.index import IndexSearcher, SearchFilter, build_index
from components.serving.query import ResultColumns, _json_value


@pytest.fixture(scope="module")
def searcher(tmp_path_factory) -> IndexSearcher:
    rng = np.random.default_rng(0)
    count = 120
    vectors = rng.standard_normal((count, 16)).astype(np.float32)
    metadata = pd.DataFrame({
        "key": [f"chip-{i:03d}" for i in range(count)],
        "label": [f"class-{i % 7}" for i in range(count)],
        "lon": np.where(np.arange(count) % 5 == 0, np.nan, rng.uniform(-10, 10, count)),
        "time": pd.to_datetime("2026-01-01", utc=True) + pd.to_timedelta(np.arange(count), unit="h"),
        "scene_id": np.arange(count) % 3,
    })
    uri = str(tmp_path_factory.mktemp("rows") / "index")
    ids = 1000 + 3 * np.arange(count)   # not row positions: the id → row lookup is exercised
    build_index(vectors, metadata, uri, factory="Flat", num_shards=2, ids=ids)
    return IndexSearcher.load(uri, device="cpu")


def reference(frame: pd.DataFrame) -> list[dict]:
    rows = []
    for record in frame.to_dict(orient="records"):
        score = float(record.pop("score"))
        row = {"rank": int(record.pop("rank")), "id": int(record.pop("id")), "score": score,
               "distance": max(0.0, 2.0 - 2.0 * score), "key": record.pop("key"), "label": record.pop("label")}
        row["metadata"] = {name: _json_value(value) for name, value in record.items()}
        rows.append(row)
    return rows


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=0, abs_tol=1e-6)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("search_filter", [None, SearchFilter(labels=["class-3"]), SearchFilter(scene_ids=[1]),
                                           SearchFilter(labels=["no-such-class"])])
def test_rows_equal_the_dataframe_path(searcher, search_filter):
    columns = ResultColumns(searcher)
    queries = np.random.default_rng(1).standard_normal((6, 16)).astype(np.float32)
    k = 25   # class-3 holds 17 items: fewer than k results, -1 ids past them
    scores, ids = searcher.search_arrays(queries, k, search_filter=search_filter)
    frames = searcher.search(queries, k, search_filter=search_filter)
    for query in range(len(queries)):
        rows = columns.rows(scores[query], ids[query])
        expected = reference(frames[query])
        assert same(rows, expected), (rows[:2], expected[:2])
        assert len(rows) == len(frames[query]) <= k
    missing = [row for row in columns.rows(scores[0], ids[0]) if row["metadata"]["lon"] is None]
    if search_filter is None:
        assert missing and all(row["metadata"]["time"].startswith("2026-01") for row in missing)
