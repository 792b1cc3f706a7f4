"""Shard planning: content-defined boundaries, deterministic names and bytes (webdataset's own)."""

from __future__ import annotations

import io
import json
import random
import tarfile

import pytest

from components.data.shards import (
    chunk_keys,
    encode_shard,
    encode_shard_with_offsets,
    plan_shards,
    sample_ids,
    sample_metadata_bytes,
)
from components.storage import sha256_bytes, sha256_json


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


def _webdataset_tar(samples, member):
    """The reference: webdataset's own writer, as chipmatch used it before writing headers itself."""
    import webdataset as wds

    buffer = io.BytesIO()
    with wds.TarWriter(buffer, mtime=0, encoder=False) as writer:
        for key, image, meta in sorted(samples, key=lambda sample: sample[0]):
            writer.write({"__key__": key, member: image, "json": meta})
    return buffer.getvalue()


@pytest.mark.parametrize("member", ["png", "npy"])
def test_encoded_shard_equals_webdatasets_tar_writer(member):
    rng = random.Random(0)
    for _ in range(30):
        samples = []
        for i in range(rng.randint(0, 25)):
            # Short and long keys (ustar holds 100 bytes; longer ones need a pax header), non-ASCII ones.
            key = "".join(rng.choice("abz/_-09") for _ in range(rng.choice([1, 40, 94, 95, 96, 140]))) + f"{i}"
            key += "é" if rng.random() < 0.1 else ""
            data = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 511, 512, 513, 3000])))
            samples.append((key, data, b'{"label":"a"}'))
        assert encode_shard(samples, member) == _webdataset_tar(samples, member)


@pytest.mark.parametrize("member", ["png", "npy"])
def test_encoder_offsets_equal_tarfiles_member_offsets(member):
    """The offsets the sample index takes from the encoder are where Python's tarfile finds each
    chip's data, for ustar and pax (long, non-ASCII) names and every padding case."""
    rng = random.Random(1)
    for _ in range(20):
        samples = []
        for i in range(rng.randint(1, 25)):
            key = "".join(rng.choice("abz/_-09") for _ in range(rng.choice([1, 40, 95, 96, 140]))) + f"{i}"
            key += "é" if rng.random() < 0.1 else ""
            data = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 511, 512, 513, 3000])))
            samples.append((key, data, b'{"label":"a"}'))
        data, offsets = encode_shard_with_offsets(samples, member)
        assert data == encode_shard(samples, member)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            expected = [(m.name[: -len(member) - 1], m.offset_data, m.size) for m in tar if m.name.endswith("." + member)]
        assert offsets == expected
        chips = {key: chip for key, chip, _ in samples}
        assert all(data[offset:offset + size] == chips[key] for key, offset, size in offsets)


def test_encoded_shard_reads_back_with_webdataset():
    import webdataset as wds

    samples = [(f"cls/{i:03d}", bytes([i]) * (i * 37), json.dumps({"i": i}).encode()) for i in range(20)]
    stream = io.BytesIO(encode_shard(samples))
    read = list(wds.tariterators.group_by_keys(wds.tariterators.tar_file_expander([{"stream": stream, "url": "x"}])))
    assert [(s["__key__"], s["png"], s["json"]) for s in read] == samples


def test_sample_ids_equal_the_canonical_json_hash():
    metas = {f"k{i}": json.dumps({"i": i}).encode() for i in range(10)}
    for size, channels in ((32, 1), (None, 3), (101, 4)):
        expected = {k: sha256_json([sha256_bytes(m), size, channels]) for k, m in metas.items()}
        assert sample_ids(metas, size, channels) == expected


def test_sample_metadata_bytes_are_canonical_and_keep_non_json_values_as_text():
    import numpy as np

    meta = {"b": 1, "a": {"y": "é", "x": [1.5, None]}, "f32": np.float32(0.5)}
    assert sample_metadata_bytes(meta) == json.dumps(
        {**meta, "f32": "0.5"}, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
