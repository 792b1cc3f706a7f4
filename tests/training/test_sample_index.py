"""The sample index (samples.parquet) and random access through it, against the sequential reader."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from components import constants as C
from components.data.reader import ChipReader, IndexedSplit, load_split
from components.data.sample_index import load_sample_index, sample_index_path, write_sample_index
from components.data.versions import open_version
from tests.training.fake_version import write_fake_version


@pytest.fixture
def version(tmp_path):
    per_class = {f"c{i}": n for i, n in enumerate([9, 3, 14, 6, 5, 8, 7])}
    return open_version(write_fake_version(str(tmp_path), per_class, seen=5, samples_per_shard=10))


def test_index_lists_every_sample_of_every_split_like_the_sequential_reader(version):
    write_sample_index(version)
    for split in C.SPLITS:
        index = load_sample_index(version, split, keys=True, metas=True, create=False)
        reference = load_split(version, split)
        assert index.keys == reference.keys
        assert index.labels.tolist() == reference.labels.tolist()
        assert index.metas == reference.metas
        assert len(index) == version.num_samples(split)
        if not len(index):   # a split this version does not use
            continue
        chips = IndexedSplit(version.store.uri, index)
        assert np.array_equal(chips.read_batch(np.arange(len(index))), reference.images)


def test_writing_is_idempotent_and_leaves_no_temporary(version):
    uri = write_sample_index(version)
    first = version.store.read_bytes(sample_index_path(version))
    assert write_sample_index(version) == uri
    assert version.store.read_bytes(sample_index_path(version)) == first
    assert not [name for name in version.store.list("datasets", recursive=True) if ".tmp-" in name]
    table = pq.read_table(version.store.path(sample_index_path(version)))
    assert table.num_rows == sum(shard["count"] for shard in version.manifest["shards"])
    assert table.schema.metadata[b"chipmatch.version"] == version.version.encode()


def test_batches_come_back_in_the_order_asked_for(version):
    index = load_sample_index(version, C.SPLIT_TRAIN)
    reference = load_split(version, C.SPLIT_TRAIN).images
    positions = np.random.default_rng(0).permutation(len(index))[:17]
    assert np.array_equal(IndexedSplit(version.store.uri, index).read_batch(positions), reference[positions])


def test_the_decoded_chip_cache_stays_within_its_bound(version):
    index = load_sample_index(version, C.SPLIT_TRAIN)
    chip_bytes = 16 * 16
    reader = ChipReader(version.store.uri, cache_bytes=5 * chip_bytes, max_open_files=2)
    for _ in range(2):
        for i in range(len(index)):
            reader.chip(index.shards[index.shard_ids[i]], index.offsets[i], index.sizes[i])
            assert reader._cached_bytes <= 5 * chip_bytes and len(reader._files) <= 2
    assert reader.hits == 0   # a cache smaller than the split never hits on a sequential sweep
    reader.chip(index.shards[index.shard_ids[-1]], index.offsets[-1], index.sizes[-1])
    assert reader.hits == 1


def test_an_index_that_does_not_match_its_shard_is_an_error(version):
    index = load_sample_index(version, C.SPLIT_TRAIN)
    reader = ChipReader(version.store.uri)
    shard = index.shards[0]
    with pytest.raises(ValueError, match="does not match the shard"):
        reader.read_bytes(shard, version.store.fs.get_file_info(version.store.path(shard)).size - 10, 100)


def test_an_unknown_split_names_the_valid_ones(version):
    with pytest.raises(ValueError, match="valid choices"):
        load_sample_index(version, "bogus")
