"""P×K sampling: batch shape, class structure, no duplicate across workers, epoch coverage,
imbalance (Zipf, singletons, classes smaller than K), world sizes 1–4, determinism, resume.

References are independent of the sampler: exact structure is counted per batch, the best
possible coverage comes from a dynamic programme over all chunk allocations, and whether a
batch *can* avoid an image on two ranks is decided by trying every arrangement of its classes.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from components.training.sampler import PKBatchSampler, epoch_coverage, fit_pk


def labels_with_sizes(sizes):
    return np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])


def zipf_sizes(classes, largest, exponent=1.2):
    return [max(1, int(largest / (rank + 1) ** exponent)) for rank in range(classes)]


# name: (class sizes, P, K); each runs at world sizes 1–4 where P·K divides.
DISTRIBUTIONS = {
    "issue": ([400, 8, 8, 8], 4, 4),                       # one class dominates; P = number of classes
    "zipf": (zipf_sizes(30, 300), 6, 4),
    "singletons": ([1] * 12 + [9, 20, 3], 6, 2),
    "smaller_than_k": ([3, 2, 5, 1, 7, 4, 6, 2], 3, 4),   # most classes below K
    "balanced": ([10] * 20, 8, 4),
}
CASES = [(name, world) for name, (_, p, k) in DISTRIBUTIONS.items() for world in (1, 2, 3, 4) if p * k % world == 0]


def samplers_for(name, world, seed=7, **kwargs):
    sizes, p, k = DISTRIBUTIONS[name]
    labels = labels_with_sizes(sizes)
    return labels, [PKBatchSampler(labels, p, k, rank=r, world_size=world, seed=seed, **kwargs) for r in range(world)]


def best_coverage(sizes, p, k, batches):
    """Most distinct images any epoch of `batches` P×K batches can show (DP over chunk counts)."""
    slots = batches * p
    best = np.full(slots + 1, -np.inf)
    best[0] = 0
    for n in sizes:   # a class in a chunks (at most one per batch) shows min(n, a·K) images
        step = np.full(slots + 1, -np.inf)
        for a in range(min(batches, slots) + 1):
            step[a:] = np.maximum(step[a:], best[:slots + 1 - a] + min(n, a * k))
        best = step
    return int(best[slots])


def can_keep_ranks_apart(batch_classes, sizes, k, share):
    """Whether some order of the batch's classes keeps every repeated image on one rank."""
    for order in itertools.permutations(batch_classes):
        ok = True
        for position, c in enumerate(order):
            start, end = position * k, (position + 1) * k
            ranks = len(range(start // share, (end - 1) // share + 1))
            if sizes[c] < ranks:
                ok = False
                break
        if ok:
            return True
    return False


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
    with pytest.raises(ValueError, match="images_per_class"):
        PKBatchSampler(labels, 2, 0)


@pytest.mark.parametrize("name,world", CASES)
def test_every_batch_is_exactly_p_distinct_classes_by_k(name, world):
    labels, samplers = samplers_for(name, world)
    sizes, p, k = DISTRIBUTIONS[name]
    batches = list(samplers[0].global_batches())
    assert len(batches) == len(samplers[0]) == math.ceil(sum(math.ceil(n / k) for n in sizes) / p)   # one pass
    for batch in batches:
        assert len(batch) == p * k
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert len(classes) == p and (counts == k).all()
        for c in classes:                      # repeats inside a class only when it has fewer than K images
            images = batch[labels[batch] == c]
            assert len(set(images.tolist())) == min(k, sizes[c])


def test_no_batch_of_the_reported_case_lacks_negatives():
    labels, (sampler,) = samplers_for("issue", 1)
    assert all(len(np.unique(labels[b])) == 4 for b in sampler.global_batches())


@pytest.mark.parametrize("name,world", CASES)
def test_every_rank_gets_its_exact_share_of_every_batch(name, world):
    _, samplers = samplers_for(name, world)
    _, p, k = DISTRIBUTIONS[name]
    for epoch in (0, 3):
        for s in samplers:
            s.set_epoch(epoch)
        whole = list(samplers[0].global_batches())
        per_rank = [list(s) for s in samplers]
        assert all(len(parts) == len(whole) for parts in per_rank)
        for t, batch in enumerate(whole):
            parts = [parts[t] for parts in per_rank]
            assert all(len(part) == p * k // world for part in parts)
            assert np.array_equal(np.concatenate(parts), batch)


# Straddling chunks: K does not divide the per-rank share, so some classes span two ranks.
STRADDLING = [([1, 1, 1, 2, 2, 3, 9, 14, 6, 1], 3, 4, 2), ([1, 1, 1, 2, 2, 3, 9, 14, 6, 1], 3, 4, 4),
              ([1, 2, 2, 1, 3, 3, 30, 1], 5, 2, 2), ([2, 3, 1, 1, 8, 12, 5, 2, 2], 3, 4, 3),
              ([4] * 6 + [1] * 4, 3, 4, 4)]


@pytest.mark.parametrize("sizes,p,k,world", STRADDLING)
def test_no_image_on_two_ranks_of_a_batch_where_avoidable(sizes, p, k, world):
    labels = labels_with_sizes(sizes)
    sampler = PKBatchSampler(labels, p, k, world_size=world, seed=11)
    share = p * k // world
    avoidable = unavoidable = 0
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for batch in sampler.global_batches():
            ranks_of = {}
            for position, index in enumerate(batch.tolist()):
                ranks_of.setdefault(index, set()).add(position // share)
            shared = [i for i, r in ranks_of.items() if len(r) > 1]
            if can_keep_ranks_apart(np.unique(labels[batch]).tolist(), sizes, k, share):
                avoidable += 1
                assert not shared, f"epoch {epoch}: images {shared} on two ranks of {batch.tolist()}"
            else:
                unavoidable += 1
                for i in shared:   # the documented fallback: only a class smaller than K repeats an image
                    assert sizes[labels[i]] < k
    assert avoidable > 0


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_coverage_is_the_best_any_pk_epoch_can_reach(name):
    sizes, p, k = DISTRIBUTIONS[name]
    labels = labels_with_sizes(sizes)
    for batches in (None, 3):                     # the default one-pass epoch, and a short one
        sampler = PKBatchSampler(labels, p, k, seed=5, batches_per_epoch=batches)
        for epoch in range(3):
            sampler.set_epoch(epoch)
            seen = len(np.unique(np.concatenate(list(sampler.global_batches()))))
            assert seen == best_coverage(sizes, p, k, len(sampler))
            assert epoch_coverage(np.array(sizes), p, k, len(sampler)) == pytest.approx(seen / len(labels))
            if batches is None:                   # the bound the docstring states: all but what a batch cannot hold
                assert seen == sum(min(n, len(sampler) * k) for n in sizes)


def test_coverage_of_skewed_and_balanced_data():
    sizes = zipf_sizes(200, 300, exponent=1.0)   # 300 down to 1 image per class (50 singletons), none > N/P
    assert max(sizes) <= sum(sizes) / 4
    sampler = PKBatchSampler(labels_with_sizes(sizes), 4, 4, seed=0)
    assert len(np.unique(sampler.plan(0))) == sum(sizes)
    assert len(sampler) * 16 < sum(sizes) + 3 * len(sizes) + 16   # N, < K top-ups per class, one partial batch
    balanced = PKBatchSampler(labels_with_sizes([12] * 40), 8, 4, seed=0)   # K divides every class: each image once
    assert len(balanced) == 15 and np.array_equal(np.sort(balanced.plan(0).ravel()), np.arange(480))


def test_a_longer_epoch_covers_what_one_batch_per_class_cannot():
    sizes, p, k = DISTRIBUTIONS["issue"]
    fit = fit_pk({f"c{i}": n for i, n in enumerate(sizes)}, p, k, 1)
    assert fit.coverage == pytest.approx((27 * 4 + 24) / 424) and "batches_per_epoch=100" in fit.message
    longer = fit_pk(labels_with_sizes(sizes), p, k, 1, batches_per_epoch=100)
    assert longer.coverage == 1.0 and longer.message is None
    sampler = PKBatchSampler(labels_with_sizes(sizes), p, k, batches_per_epoch=longer.batches_per_epoch)
    assert len(np.unique(sampler.plan(0))) == sum(sizes)


def test_batches_depend_only_on_seed_and_epoch():
    labels, samplers = samplers_for("zipf", 3, seed=2)
    again = PKBatchSampler(labels, 6, 4, rank=1, world_size=3, seed=2)
    other_seed = PKBatchSampler(labels, 6, 4, seed=3)
    for epoch in (0, 5):
        again.set_epoch(epoch)
        plans = [s.plan(epoch) for s in samplers]
        assert all(np.array_equal(plans[0], plan) for plan in plans)      # identical on every rank
        assert np.array_equal(np.stack(list(again.global_batches())), plans[0])
        assert not np.array_equal(other_seed.plan(epoch), plans[0])
    assert not np.array_equal(samplers[0].plan(0), samplers[0].plan(1))


def test_resume_mid_epoch_reproduces_the_same_batches():
    labels, (_, rank1) = samplers_for("zipf", 2, seed=4)
    rank1.set_epoch(2)
    full = list(rank1)
    rank1.set_epoch(2, start_batch=3)
    assert len(rank1) == len(full)                      # __len__ stays the whole epoch
    assert all(np.array_equal(a, b) for a, b in zip(list(rank1), full[3:], strict=True))

    # A checkpoint taken after 4 training steps, restored into a fresh sampler.
    rank1.set_epoch(2)
    iterator = iter(rank1)
    for _ in range(4):
        next(iterator)
    state = rank1.state_dict()
    assert state["epoch"] == 2 and state["start_batch"] == 4
    fresh = PKBatchSampler(labels, 6, 4, rank=1, world_size=2, seed=4)
    fresh.load_state_dict(state)
    assert all(np.array_equal(a, b) for a, b in zip(list(fresh), full[4:], strict=True))
    for _ in iterator:
        pass
    assert rank1.state_dict() == {"epoch": 3, "start_batch": 0, "seed": 4}   # a finished epoch resumes at the next
    with pytest.raises(ValueError, match="seed"):
        PKBatchSampler(labels, 6, 4, seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="start_batch"):
        rank1.set_epoch(0, start_batch=len(rank1) + 1)


def test_fit_pk_adapts_p_to_a_small_dataset_and_names_what_it_chose():
    labels = labels_with_sizes([10] * 6)
    fit = fit_pk(labels, 32, 4, 1)
    assert (fit.classes_per_batch, fit.images_per_class) == (6, 4)
    assert "train.classes_per_batch=32" in fit.message and "using train.classes_per_batch=6" in fit.message
    assert fit_pk({f"c{i}": 10 for i in range(6)}, 32, 4, 1)[:2] == (6, 4)     # counts or labels alike
    assert fit_pk(labels, 4, 4, 2).message is None
    assert fit_pk(labels, 32, 1, 4).classes_per_batch == 4                   # the largest P that divides
    PKBatchSampler(labels, *fit_pk(labels, 32, 3, 4)[:2], world_size=4)      # what fit_pk returns works


def test_fit_pk_names_the_key_and_the_fix():
    labels = labels_with_sizes([10] * 6)
    with pytest.raises(ValueError, match=r"train\.num_workers=4.*multiple of 4"):
        fit_pk(labels, 5, 1, 4)
    with pytest.raises(ValueError, match=r"train\.classes_per_batch=7 exceeds the 2 training classes.*images_per_class"):
        fit_pk(labels_with_sizes([3, 3]), 7, 1, 4)
    with pytest.raises(ValueError, match="train.images_per_class"):
        fit_pk(labels, 2, 0, 1)
    with pytest.raises(ValueError, match="train.num_workers"):
        fit_pk(labels, 2, 2, 0)
    with pytest.raises(ValueError, match="no labelled images"):
        fit_pk({}, 2, 2, 1)
