"""P×K sampling: batch shape, class structure, no duplicate across workers, epoch coverage."""

from __future__ import annotations

import numpy as np
import pytest

from components.training.sampler import PKBatchSampler


def labels_with_sizes(sizes):
    return np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])


def test_global_batches_are_p_classes_by_k_images():
    labels = labels_with_sizes([10] * 20)
    sampler = PKBatchSampler(labels, classes_per_batch=8, images_per_class=4, seed=1)
    for batch in sampler.global_batches():
        assert len(batch) == 32 and len(set(batch.tolist())) == 32
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert len(classes) == 8 and (counts == 4).all()


@pytest.mark.parametrize("world", [2, 4])
def test_workers_get_disjoint_slices_that_form_the_global_batch(world):
    labels = labels_with_sizes([7, 12, 30, 5, 9, 16, 8, 11])
    samplers = [PKBatchSampler(labels, 4, 4, rank=r, world_size=world, seed=3) for r in range(world)]
    reference = PKBatchSampler(labels, 4, 4, seed=3)
    for epoch in (0, 1):
        for s in samplers + [reference]:
            s.set_epoch(epoch)
        for parts, whole in zip(zip(*samplers), reference.global_batches()):
            assert np.array_equal(np.concatenate(parts), whole)
            flat = np.concatenate(parts)
            assert len(set(flat.tolist())) == len(flat)         # no sample on two workers


def test_epoch_covers_the_training_data():
    labels = labels_with_sizes([16] * 25)
    sampler = PKBatchSampler(labels, 5, 4, seed=0)
    seen = np.concatenate(list(sampler.global_batches()))
    assert len(sampler) == 20
    assert len(np.unique(seen)) / len(labels) > 0.9


def test_small_classes_repeat_and_epochs_differ():
    labels = labels_with_sizes([2, 2, 50])
    sampler = PKBatchSampler(labels, 3, 4, seed=0)
    batch = next(iter(sampler))
    assert (np.unique(labels[batch], return_counts=True)[1] == 4).all()
    first = list(sampler.global_batches())
    sampler.set_epoch(1)
    assert any(not np.array_equal(a, b) for a, b in zip(first, sampler.global_batches()))


def test_bad_settings_are_named():
    labels = labels_with_sizes([5] * 3)
    with pytest.raises(ValueError, match="classes_per_batch"):
        PKBatchSampler(labels, 4, 2)
    with pytest.raises(ValueError, match="divide evenly"):
        PKBatchSampler(labels, 3, 3, rank=0, world_size=2)
