"""An index folder is reused through `reuse_when_complete` only when its manifest is complete
for the same inputs: a missing shard or an unreadable manifest means a rebuild (the searcher
then answers exactly as brute force does)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from components.index import build_index
from components.index.manifest import INDEX_MANIFEST_FILENAME
from components.index.search import IndexSearcher


def _vectors(n: int = 300, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(3).standard_normal((n, dim)).astype(np.float32)


def _keys(n: int = 300) -> pd.DataFrame:
    return pd.DataFrame({"key": [f"chip-{i:05d}" for i in range(n)]})


def _check_exact(out: str, vectors: np.ndarray) -> None:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = np.argsort(-(unit[:5] @ unit.T), axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(IndexSearcher.load(out).search_arrays(vectors[:5], 3)[1], expected)


def test_a_missing_shard_or_a_broken_manifest_means_a_rebuild(tmp_path):
    vectors, out = _vectors(), str(tmp_path / "idx")
    first = build_index(vectors, _keys(), out, factory="Flat", num_shards=2)
    os.remove(os.path.join(out, first.shards[1].file))
    again = build_index(vectors, _keys(), out, factory="Flat", num_shards=2)
    assert again == first and os.path.exists(os.path.join(out, first.shards[1].file))
    _check_exact(out, vectors)
    with open(os.path.join(out, INDEX_MANIFEST_FILENAME), "w") as handle:
        handle.write("{not json")
    assert build_index(vectors, _keys(), out, factory="Flat", num_shards=2) == first
    _check_exact(out, vectors)
