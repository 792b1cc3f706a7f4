"""Every miner equals its slow loop reference, and pml 2.9's miner where pml's is right."""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from components.miners import (
    DISTANCES,
    PAIRS,
    TRIPLETS,
    as_triplets,
    available_miners,
    build_miner,
    check_miner_spec,
    miner_from_spec,
    pair_masks,
)
from components.miners.base import build_distance
from tests.miners import miner_references as ref

# P×K, K = 2, ragged with a singleton class (an anchor without positives), one class only
# (no negatives), all shuffled.
CLASS_COUNTS = {"4x3": [3, 3, 3, 3], "5x2": [2, 2, 2, 2, 2], "ragged": [1, 2, 3, 5], "one-class": [4]}
SEEDS = [0, 1, 2]


def make_batch(counts, seed, dim=5):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=generator)]
    return torch.randn(len(labels), dim, generator=generator, dtype=torch.float64), labels


def as_set(indices):
    return set(zip(*[t.tolist() for t in indices]))


def as_pair_sets(indices):
    a1, p, a2, n = indices
    return as_set((a1, p)), as_set((a2, n))


batches = pytest.mark.parametrize("shape, seed", [(s, seed) for s in CLASS_COUNTS for seed in SEEDS])
distances = pytest.mark.parametrize("distance", list(DISTANCES))


def test_registry_lists_the_four_miners():
    assert available_miners() == ["batch_all", "batch_hard", "semi_hard", "multi_similarity"]
    assert {name: build_miner(name).output for name in available_miners()} == {
        "batch_all": TRIPLETS, "batch_hard": TRIPLETS, "semi_hard": TRIPLETS, "multi_similarity": PAIRS,
    }


# --- slow loop references ---------------------------------------------------------------------
@batches
@distances
@pytest.mark.parametrize("margin", [None, 0.1, 0.5])
def test_batch_all(shape, seed, distance, margin):
    embeddings, labels = make_batch(CLASS_COUNTS[shape], seed)
    mined = build_miner("batch_all", margin=margin, distance=distance)(embeddings, labels)
    expected = ref.batch_all(ref.dissimilarity(embeddings, distance), labels, margin)
    assert as_set(mined) == expected
    assert len(mined[0]) == len(expected)  # no triplet twice


@batches
@distances
def test_batch_hard(shape, seed, distance):
    embeddings, labels = make_batch(CLASS_COUNTS[shape], seed)
    mined = build_miner("batch_hard", distance=distance)(embeddings, labels)
    assert as_set(mined) == ref.batch_hard(ref.dissimilarity(embeddings, distance), labels)


@batches
@distances
def test_semi_hard(shape, seed, distance):
    embeddings, labels = make_batch(CLASS_COUNTS[shape], seed)
    mined = build_miner("semi_hard", distance=distance)(embeddings, labels)
    assert as_set(mined) == ref.semi_hard(ref.dissimilarity(embeddings, distance), labels)


@batches
@distances
@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.5])
def test_multi_similarity(shape, seed, distance, epsilon):
    embeddings, labels = make_batch(CLASS_COUNTS[shape], seed)
    mined = build_miner("multi_similarity", epsilon=epsilon, distance=distance)(embeddings, labels)
    assert as_pair_sets(mined) == ref.multi_similarity(ref.dissimilarity(embeddings, distance), labels, epsilon)


def test_the_references_are_not_trivial():
    # Guards the comparisons above: on this batch each miner keeps a strict, non-empty subset.
    embeddings, labels = make_batch(CLASS_COUNTS["4x3"], 0)
    d = ref.dissimilarity(embeddings)
    every = ref.batch_all(d, labels)
    for mined in (ref.batch_all(d, labels, 0.1), ref.batch_hard(d, labels), ref.semi_hard(d, labels)):
        assert 0 < len(mined) < len(every)
    positive, negative = ref.multi_similarity(ref.dissimilarity(embeddings, "cosine"), labels)
    assert 0 < len(negative) < 12 * 9 and len(positive) > 0


# --- pytorch-metric-learning 2.9, where its miner is right ------------------------------------
@batches
@distances
@pytest.mark.parametrize("margin", [0.1, 0.5])
def test_batch_all_with_margin_equals_pml_triplet_margin_miner(shape, seed, distance, margin):
    embeddings, labels = make_batch(CLASS_COUNTS[shape], seed)
    pml = pml_miners.TripletMarginMiner(margin=margin, type_of_triplets="all", distance=build_distance(distance))
    ours = build_miner("batch_all", margin=margin, distance=distance)
    assert as_set(ours(embeddings, labels)) == as_set(pml(embeddings, labels))


@batches
def test_batch_all_equals_pml_all_triplets(shape, seed):
    embeddings, labels = make_batch(CLASS_COUNTS[shape], seed)
    assert as_set(build_miner("batch_all")(embeddings, labels)) == as_set(lmu.get_all_triplets_indices(labels))


@batches
@distances
def test_batch_hard_equals_pml(shape, seed, distance):
    embeddings, labels = make_batch(CLASS_COUNTS[shape], seed)
    pml = pml_miners.BatchHardMiner(distance=build_distance(distance))
    assert as_set(build_miner("batch_hard", distance=distance)(embeddings, labels)) == as_set(pml(embeddings, labels))


@batches
@distances
@pytest.mark.parametrize("epsilon", [0.1, 0.5])
def test_multi_similarity_equals_pml(shape, seed, distance, epsilon):
    embeddings, labels = make_batch(CLASS_COUNTS[shape], seed)
    pml = pml_miners.MultiSimilarityMiner(epsilon=epsilon, distance=build_distance(distance))
    ours = build_miner("multi_similarity", epsilon=epsilon, distance=distance)
    assert as_pair_sets(ours(embeddings, labels)) == as_pair_sets(pml(embeddings, labels))


@batches
@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_semi_hard_picks_the_nearest_of_pmls_semihard_negatives(shape, seed, margin):
    # pml's "semihard" keeps every negative with d_ap < d_an <= d_ap + margin (another
    # definition); where a pair has some, ours is the nearest of them.
    embeddings, labels = make_batch(CLASS_COUNTS[shape], seed)
    d = ref.dissimilarity(embeddings)
    pml = pml_miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard", distance=build_distance("euclidean"))
    band = {}
    for a, p, k in as_set(pml(embeddings, labels)):
        band.setdefault((a, p), []).append(k)
    ours = {(a, p): k for a, p, k in as_set(build_miner("semi_hard")(embeddings, labels))}
    for pair, negatives in band.items():
        assert ours[pair] == min(negatives, key=lambda k: d[pair[0]][k])
    if shape != "one-class":
        assert band  # the check above ran


# --- forms, conversions and specs -----------------------------------------------------------
@batches
def test_pairs_to_triplets_equals_pml_conversion(shape, seed):
    embeddings, labels = make_batch(CLASS_COUNTS[shape], seed)
    pairs = build_miner("multi_similarity", epsilon=0.3)(embeddings, labels)
    ours = as_set(as_triplets(pairs))
    assert ours == as_set(lmu.convert_to_triplets(pairs, labels))
    assert ours == ref.triplets_of(as_pair_sets(pairs))


@batches
def test_pair_masks_hold_the_distinct_pairs(shape, seed):
    embeddings, labels = make_batch(CLASS_COUNTS[shape], seed)
    triplets = build_miner("batch_all")(embeddings, labels)
    positive, negative = pair_masks(triplets, len(labels))
    expected_positive, expected_negative = ref.pairs_of(as_set(triplets))
    assert as_set(torch.nonzero(positive, as_tuple=True)) == expected_positive
    assert as_set(torch.nonzero(negative, as_tuple=True)) == expected_negative


@pytest.mark.parametrize("name", ["batch_all", "batch_hard", "semi_hard", "multi_similarity"])
def test_a_given_matrix_gives_the_same_result_and_no_gradient(name):
    embeddings, labels = make_batch(CLASS_COUNTS["4x3"], 0)
    embeddings.requires_grad_(True)
    miner = build_miner(name)
    own = miner(embeddings, labels)
    given = miner(embeddings, labels, miner.distance(embeddings))
    assert all(torch.equal(a, b) for a, b in zip(own, given))
    assert all(not t.requires_grad and t.dtype == torch.long for t in own)


def test_specs_build_and_name_what_is_wrong():
    assert miner_from_spec(None) is None
    assert type(miner_from_spec("batch_hard")).__name__ == "BatchHardMiner"
    miner = miner_from_spec({"name": "batch_all", "params": {"margin": 0.2, "distance": "cosine"}})
    assert (miner.margin, miner.distance_name) == (0.2, "cosine")
    assert miner_from_spec(miner) is miner
    with pytest.raises(ValueError, match="'hardest'") as error:
        check_miner_spec("hardest", "loss.params.miner")
    assert "loss.params.miner" in str(error.value) and "semi_hard" in str(error.value)
    with pytest.raises(ValueError, match="'eps'") as error:
        check_miner_spec({"name": "multi_similarity", "params": {"eps": 0.1}})
    assert "epsilon" in str(error.value)
    with pytest.raises(ValueError, match="'name'"):
        check_miner_spec({"params": {}})
    with pytest.raises(ValueError, match="distance"):
        miner_from_spec({"name": "batch_hard", "params": {"distance": "manhattan"}})
    with pytest.raises(ValueError, match="epsilon"):
        build_miner("multi_similarity", epsilon="big")
    with pytest.raises(TypeError, match="'margine'"):
        build_miner("batch_all", margine=0.1)


def test_bad_inputs_are_rejected_with_a_message():
    with pytest.raises(ValueError, match="embeddings"):
        build_miner("batch_hard")(torch.randn(4), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="labels"):
        build_miner("batch_hard")(torch.randn(4, 3), torch.tensor([0, 0, 1]))
