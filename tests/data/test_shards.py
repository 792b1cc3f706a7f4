"""Shard planning: content-defined boundaries, deterministic names and bytes."""

from __future__ import annotations

import io
import tarfile

from components.data.shards import chunk_keys, encode_shard, plan_shards


def test_chunks_cover_keys_in_order_with_bounded_sizes():
    keys = [f"k{i:06d}" for i in range(5000)]
    chunks = chunk_keys(keys, 200)
    assert [k for chunk in chunks for k in chunk] == keys
    assert all(len(c) <= 400 for c in chunks)
    assert all(len(c) >= 100 for c in chunks[:-1])
    assert 15 <= len(chunks) <= 40


def test_adding_keys_changes_only_the_shards_they_fall_into():
    keys = [f"k{i:06d}" for i in range(0, 10000, 2)]
    before = {tuple(c) for c in chunk_keys(keys, 100)}
    added = sorted(keys + ["k000101", "k004001", "k009001"])
    after = {tuple(c) for c in chunk_keys(added, 100)}
    assert len(after - before) <= 6
    assert len(before & after) >= len(before) - 6


def test_plan_names_depend_on_content_only():
    ids = {f"k{i}": f"id{i}" for i in range(50)}
    plan_a = plan_shards({"train": list(ids)}, ids, 10)
    plan_b = plan_shards({"train": list(reversed(list(ids)))}, ids, 10)
    assert [p.name for p in plan_a] == [p.name for p in plan_b]
    changed = dict(ids, k0="other")
    assert [p.name for p in plan_shards({"train": list(ids)}, changed, 10)] != [p.name for p in plan_a]


def test_encoded_shard_is_deterministic_and_sorted():
    samples = [("b/2", b"png2", b"{}"), ("a/1", b"png1", b"{}")]
    data = encode_shard(samples)
    assert data == encode_shard(list(reversed(samples)))
    names = tarfile.open(fileobj=io.BytesIO(data)).getnames()
    assert names == ["a/1.json", "a/1.png", "b/2.json", "b/2.png"]
