"""The live follower without Serve: what it loads, when it swaps, and what a bad generation does.

Real FAISS indexes built with components.index and real pointer switches (components.release);
answers are checked against numpy brute force over the vectors each index was built from."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from components.errors import ConfigError
from components.index import build_index
from components.release import rollback, switch_live
from components.serving.app import build_app
from components.serving.auth import TOKEN_ENV
from components.serving.live import LiveFollower
from components.storage import Store

NAME = "follow"
DIM = 8


def make_index(root, folder: str, seed: int) -> tuple[str, np.ndarray]:
    vectors = np.random.default_rng(seed).standard_normal((50, DIM)).astype(np.float32)
    uri = f"{root}/indexes/{NAME}/{folder}"
    build_index(vectors, pd.DataFrame({"key": [f"{folder}-{i}" for i in range(50)]}), uri, factory="Flat")
    return uri, vectors


def nearest(vectors: np.ndarray, query: np.ndarray) -> int:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return int(np.argmax(unit @ query))


def test_the_follower_swaps_only_to_a_fully_loaded_generation(tmp_path):
    store = Store(str(tmp_path))
    first_uri, first = make_index(tmp_path, "a", seed=0)
    second_uri, second = make_index(tmp_path, "b", seed=1)
    with pytest.raises(FileNotFoundError, match="no live index"):
        LiveFollower(str(tmp_path), NAME, period_s=0.1, device="cpu")
    switch_live(store, NAME, first_uri, keep_generations=3)
    follower = LiveFollower(str(tmp_path), NAME, period_s=0.1, device="cpu")
    served = follower.current
    assert (served.index, served.sequence, served.model) == (f"indexes/{NAME}/a", 1, None)
    assert follower.check() is False   # nothing changed: no reload

    # A generation whose shard does not match its manifest is not swapped in.
    switch_live(store, NAME, second_uri, keep_generations=3)
    shard = next(name for name in Store(second_uri).list() if name.endswith(".faiss"))
    good = Store(second_uri).read_bytes(shard)
    Store(second_uri).write_bytes(shard, good[:-8] + bytes(b ^ 0xFF for b in good[-8:]))   # same size, other bytes
    with pytest.raises(ValueError, match="sha256"):
        follower.check()
    assert follower.current is served
    query = np.random.default_rng(2).standard_normal(DIM).astype(np.float32)
    query /= np.linalg.norm(query)
    assert follower.current.searcher.search_arrays(query[None], 1)[1][0, 0] == nearest(first, query)

    # The background thread records the failure, keeps serving, and swaps once the index is whole.
    follower.start()
    try:
        deadline = time.monotonic() + 30
        while follower.last_error is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "sha256" in follower.last_error and follower.current is served
        Store(second_uri).write_bytes(shard, good)
        while follower.current.index != f"indexes/{NAME}/b":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert follower.last_error is None and follower.current.sequence == 2
        assert follower.current.searcher.search_arrays(query[None], 1)[1][0, 0] == nearest(second, query)
        # A rollback is a new generation too: the old index comes back, at a new sequence.
        rollback(store, NAME)
        while follower.current.sequence != 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert follower.current.index == f"indexes/{NAME}/a"
        assert follower.running
    finally:
        follower.stop()
    assert not follower.running
    with pytest.raises(ConfigError, match="poll_seconds"):
        follower.set_period(0)


def test_the_application_builder_names_bad_args(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "t" * 32)
    with pytest.raises(ConfigError, match="unknown args \\['root'\\]"):
        build_app({"root": "s3://x", "name": NAME})
    with pytest.raises(ConfigError, match="'name'"):
        build_app({"storage_root": "s3://x"})
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(ConfigError, match="only allowed on a loopback host"):
        build_app({"storage_root": "s3://x", "name": NAME, "insecure": True})
    assert build_app({"storage_root": "/srv", "name": NAME, "insecure": True, "host": "127.0.0.1"}) is not None
