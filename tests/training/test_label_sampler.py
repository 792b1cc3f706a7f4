"""Dense triplet sampling: neighbours are exact nearest in label space, DDP slices, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from components.training.label_sampler import LabelNeighbourBatchSampler


def continuous_labels(n: int, seed: int, duplicates: bool = False) -> np.ndarray:
    """Vehicle-like length/width attributes; with `duplicates`, many samples share a value
    (as all images of one vehicle model do), so neighbour distances tie."""
    rng = np.random.default_rng(seed)
    if duplicates:
        models = rng.uniform([3.0, 1.5], [12.0, 3.0], size=(n // 8, 2))
        return models[rng.integers(0, len(models), n)]
    return rng.uniform([3.0, 1.5], [12.0, 3.0], size=(n, 2))


@pytest.mark.parametrize("duplicates", [False, True])
def test_neighbours_are_the_nearest_in_label_space(duplicates):
    labels = continuous_labels(300, seed=0, duplicates=duplicates)
    k = 5
    sampler = LabelNeighbourBatchSampler(labels, 48, k, seed=1)
    checked = 0
    for batch, groups in sampler.anchored_batches():
        assert len(batch) == 48 and len(np.unique(batch)) == 48
        assert len(groups) == sampler.anchors_per_batch == 4  # half of 48 in groups of 6
        for anchor, neighbours in groups.items():
            # Brute force: every sample's distance to the anchor, one at a time.
            distances = np.array([np.linalg.norm(labels[i] - labels[anchor]) ** 2 for i in range(len(labels))])
            others = np.delete(np.arange(len(labels)), anchor)
            kth_smallest = np.sort(distances[others])[:k]
            assert anchor not in neighbours and len(np.unique(neighbours)) == k
            np.testing.assert_allclose(np.sort(distances[neighbours]), kth_smallest, rtol=1e-12, atol=1e-12)
            assert set(neighbours.tolist()) | {anchor} <= set(batch.tolist())
            checked += 1
    assert checked == len(sampler) * 4


def test_tied_neighbours_are_drawn_at_random_among_the_ties():
    # 40 samples share the anchor's label exactly: which 3 are its neighbours varies by epoch.
    labels = np.concatenate([np.zeros((40, 2)), np.random.default_rng(2).uniform(5, 9, (60, 2))])
    sampler = LabelNeighbourBatchSampler(labels, 10, 3, seed=0)
    drawn = set()
    for seed in range(20):
        neighbours = sampler.nearest_neighbours(0, np.random.default_rng(seed))
        assert (labels[neighbours] == 0).all()
        drawn.update(neighbours.tolist())
    assert len(drawn) > 10


@pytest.mark.parametrize("world", [2, 4])
def test_rank_slices_are_disjoint_and_cover_the_global_batch(world):
    labels = continuous_labels(500, seed=3)
    samplers = [LabelNeighbourBatchSampler(labels, 32, 3, rank=r, world_size=world, seed=4) for r in range(world)]
    reference = LabelNeighbourBatchSampler(labels, 32, 3, seed=4)
    for epoch in (0, 1):
        for sampler in samplers + [reference]:
            sampler.set_epoch(epoch)
        batches = 0
        for parts, whole in zip(zip(*samplers), reference.global_batches()):
            assert all(len(part) == 32 // world for part in parts)
            flat = np.concatenate(parts)
            assert np.array_equal(flat, whole)
            assert len(np.unique(flat)) == len(flat)  # no sample on two ranks
            batches += 1
        assert batches == len(reference) == 16


def test_batches_are_deterministic_for_seed_and_epoch_and_differ_otherwise():
    labels = continuous_labels(200, seed=5)

    def epoch_batches(seed, epoch):
        sampler = LabelNeighbourBatchSampler(labels, 20, 4, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    first = epoch_batches(0, 0)
    assert all(np.array_equal(a, b) for a, b in zip(first, epoch_batches(0, 0)))
    for other in (epoch_batches(0, 1), epoch_batches(1, 0)):
        assert any(not np.array_equal(a, b) for a, b in zip(first, other))


def test_anchors_cycle_through_every_sample():
    labels = continuous_labels(120, seed=6)
    sampler = LabelNeighbourBatchSampler(labels, 12, 2, anchors_per_batch=4, batches_per_epoch=30, seed=7)
    anchors = [a for _, groups in sampler.anchored_batches() for a in groups]
    assert len(anchors) == 120
    # One shuffled pass (minus anchors that were already in their batch as a neighbour).
    assert len(set(anchors)) > 100


def test_one_dimensional_labels_and_the_papers_single_anchor():
    labels = np.linspace(0.0, 1.0, 50)
    sampler = LabelNeighbourBatchSampler(labels, 10, 4, anchors_per_batch=1, seed=0)
    batch, groups = next(sampler.anchored_batches())
    (anchor, neighbours), = groups.items()
    assert np.array_equal(batch[:5], np.r_[anchor, neighbours])
    # On a line with spacing 1/49, the 4 nearest are within 2 steps of the anchor.
    assert np.abs(labels[neighbours] - labels[anchor]).max() <= 2 / 49 + 1e-12


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        (dict(labels=np.zeros((0, 2))), ValueError, "non-empty"),
        (dict(labels=np.array([["a", "b"]] * 30)), TypeError, "numeric labels"),
        (dict(labels=np.full((30, 2), np.nan)), ValueError, "NaN"),
        (dict(batch_size=31), ValueError, "exceeds the 30 training samples"),
        (dict(batch_size=9, world_size=2), ValueError, "divide evenly"),
        (dict(neighbours_per_anchor=12), ValueError, "neighbours_per_anchor=12"),
        (dict(neighbours_per_anchor=0), ValueError, "neighbours_per_anchor must be a positive int"),
        (dict(anchors_per_batch=4), ValueError, "anchors_per_batch"),
        (dict(rank=2, world_size=2), ValueError, "rank must be"),
        (dict(batches_per_epoch=0), ValueError, "batches_per_epoch"),
    ],
)
def test_bad_settings_are_named(arguments, error, message):
    settings = dict(labels=continuous_labels(30, seed=8), batch_size=10, neighbours_per_anchor=3)
    settings.update(arguments)
    with pytest.raises(error, match=message):
        LabelNeighbourBatchSampler(**settings)


def test_resume_mid_epoch_sees_the_remaining_batches():
    labels = continuous_labels(160, seed=9)
    sampler = LabelNeighbourBatchSampler(labels, 16, 3, seed=2)
    sampler.set_epoch(3)
    whole = list(sampler)
    iterator = iter(sampler)
    for _ in range(4):
        next(iterator)
    state = sampler.state_dict()
    assert state == {"epoch": 3, "start_batch": 4, "seed": 2}
    resumed = LabelNeighbourBatchSampler(labels, 16, 3, seed=2)
    resumed.load_state_dict(state)
    assert len(resumed) == len(whole) == 10
    rest = list(resumed)
    assert len(rest) == 6 and all(np.array_equal(a, b) for a, b in zip(rest, whole[4:]))
    assert resumed.state_dict() == {"epoch": 4, "start_batch": 0, "seed": 2}
    with pytest.raises(ValueError, match="seed"):
        LabelNeighbourBatchSampler(labels, 16, 3, seed=5).load_state_dict(state)
