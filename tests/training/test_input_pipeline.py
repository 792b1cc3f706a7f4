"""The streaming training input: exact P×K per rank, the right pixels, reproducible randomness."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from components import constants as C
from components.data.reader import load_split
from components.data.sample_index import load_sample_index
from components.data.versions import open_version
from components.models.transforms import batch_to_tensor, build_eval_transform
from components.training.config import TrainConfig
from components.training.data import BatchAugment, build_train_loader, train_transform
from components.training.sampler import PKBatchSampler
from tests.training.fake_version import write_fake_version

P, K = 4, 4


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    per_class = {f"c{i}": n for i, n in enumerate([30, 9, 14, 6, 12, 8, 20, 10])}
    return open_version(write_fake_version(str(tmp_path_factory.mktemp("pk")), per_class, seen=6, samples_per_shard=16))


def loader_batches(version, rank=0, world=1, epoch=0, start_step=0, **train):
    config = TrainConfig(classes_per_batch=P, images_per_class=K, **{"loader_workers": 0, **train})
    index = load_sample_index(version, C.SPLIT_TRAIN)
    sampler = PKBatchSampler(index.labels, P, K, rank=rank, world_size=world, seed=config.seed,
                             batches_per_epoch=config.batches_per_epoch)
    loader, requests, device_augment = build_train_loader(version.store.uri, index, sampler, config, rank, torch.device("cpu"))
    assert device_augment is None   # on CPU the loader augments
    requests.set_epoch(epoch, start_step)
    return [(batch["step"], batch["positions"].numpy(), batch["images"]) for batch in loader], index


@pytest.mark.parametrize("world", [1, 2, 4])
def test_every_global_batch_is_p_classes_by_k_images_split_exactly_over_ranks(version, world):
    per_rank = [loader_batches(version, rank, world, augment=False)[0] for rank in range(world)]
    labels = load_sample_index(version, C.SPLIT_TRAIN).labels
    assert len({len(batches) for batches in per_rank}) == 1 and len(per_rank[0]) > 0
    for steps in zip(*per_rank):
        assert all(len(positions) == P * K // world for _, positions, _ in steps)
        positions = np.concatenate([p for _, p, _ in steps])
        counts = Counter(labels[positions].tolist())
        assert len(counts) == P and set(counts.values()) == {K}


def test_images_are_the_chips_at_those_positions(version):
    batches, _ = loader_batches(version, augment=False)
    reference = load_split(version, C.SPLIT_TRAIN).images   # key order = index order
    transform = build_eval_transform()
    for _, positions, images in batches:
        assert torch.allclose(images, transform(batch_to_tensor(reference[positions])))


def test_batches_do_not_depend_on_the_number_of_loader_processes(version):
    inline, _ = loader_batches(version, epoch=1, loader_workers=0)
    workers, _ = loader_batches(version, epoch=1, loader_workers=2)
    assert len(inline) == len(workers)
    for (s0, p0, i0), (s1, p1, i1) in zip(inline, workers):
        assert s0 == s1 and np.array_equal(p0, p1) and torch.equal(i0, i1)


def test_a_loader_started_mid_epoch_yields_the_rest_of_that_epoch(version):
    full, _ = loader_batches(version, epoch=2)
    resumed, _ = loader_batches(version, epoch=2, start_step=2)
    assert len(resumed) == len(full) - 2
    for (s0, p0, i0), (s1, p1, i1) in zip(full[2:], resumed):
        assert s0 == s1 and np.array_equal(p0, p1) and torch.equal(i0, i1)


def test_augmentation_differs_by_rank_epoch_and_step_and_repeats_for_the_same_ones(version):
    images = batch_to_tensor(load_split(version, C.SPLIT_TRAIN).images[:8])
    transform = train_transform(TrainConfig())
    rank0, rank1 = BatchAugment(transform, seed=0, rank=0), BatchAugment(transform, seed=0, rank=1)
    assert torch.equal(rank0(images, 3, 5), rank0(images, 3, 5))
    for other in (rank1(images, 3, 5), rank0(images, 4, 5), rank0(images, 3, 6)):
        assert not torch.allclose(rank0(images, 3, 5), other)
    # The global RNG is neither used nor disturbed.
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    rank0(images, 0, 0)
    assert torch.equal(torch.rand(3), expected)


def test_augmenting_after_the_transfer_gives_the_loaders_batches(version):
    """The GPU path (uint8 from the loader, augmentation on the step's device) run on the CPU:
    the same generator seeds give the same pixels as augmenting in the loader."""
    config = TrainConfig(classes_per_batch=P, images_per_class=K, loader_workers=0)
    index = load_sample_index(version, C.SPLIT_TRAIN)
    results = []
    for on_device in (False, True):
        sampler = PKBatchSampler(index.labels, P, K, seed=0)
        loader, requests, augment = build_train_loader(version.store.uri, index, sampler, config, 0,
                                                       torch.device("cpu"), augment_on_device=on_device)
        requests.set_epoch(1)
        batches = []
        for batch in loader:
            images = batch["images"]
            if augment is not None:
                assert images.dtype == torch.uint8
                images = augment(images, batch["epoch"], batch["step"])
            batches.append(images)
        results.append(batches)
    for loaded, augmented in zip(*results):
        assert torch.allclose(loaded, augmented, atol=1e-6)
