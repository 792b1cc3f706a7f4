"""Any miner with any pair or triplet loss equals a slow reference over the mined pairs or
triplets (mined by the slow reference miners, not by the code under test), and pml where pml
is right; the older ``mining`` keeps its meaning."""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
from pytorch_metric_learning.reducers import MeanReducer

from components.losses import build_loss
from tests.losses import loss_references as ref
from tests.losses.test_loss_references import CLASS_COUNTS, TOL, make_batch
from tests.miners import miner_references as mref

shapes = pytest.mark.parametrize("shape", list(CLASS_COUNTS))


def reference_mined(name, embeddings, labels, **params):
    """What the reference miner ``name`` keeps: a triplet set or (positive, negative) pair sets."""
    distance = params.pop("distance", "cosine" if name == "multi_similarity" else "euclidean")
    d = mref.dissimilarity(embeddings, distance)
    return getattr(mref, name)(d, labels, **params)


MINERS = [
    ("batch_all", {}),
    ("batch_all", {"margin": 0.2}),
    ("batch_hard", {}),
    ("semi_hard", {}),
    ("multi_similarity", {"epsilon": 0.1}),
    ("multi_similarity", {"epsilon": 0.4}),
]
miners = pytest.mark.parametrize("miner, miner_params", MINERS, ids=lambda v: str(v) if v else "")


def spec(miner, miner_params):
    return {"name": miner, "params": miner_params} if miner_params else miner


@shapes
@miners
@pytest.mark.parametrize("margins", [{}, dict(pos_margin=0.3, neg_margin=1.2)])
def test_contrastive_with_a_miner(shape, miner, miner_params, margins):
    embeddings, labels = make_batch(CLASS_COUNTS[shape])
    loss = build_loss("contrastive", miner=spec(miner, miner_params), **margins)
    positive, negative = mref.pairs_of(reference_mined(miner, embeddings, labels, **miner_params))
    expected = ref.contrastive_over(embeddings, positive, negative, **margins)
    assert loss(embeddings, labels).item() == pytest.approx(expected, **TOL)


def test_contrastive_miners_change_the_loss():
    # Guards the test above: a miner is not a no-op on this batch.
    embeddings, labels = make_batch(CLASS_COUNTS["4x3"])
    unmined = build_loss("contrastive")(embeddings, labels).item()
    for miner in ("batch_hard", "semi_hard", "multi_similarity"):
        assert build_loss("contrastive", miner=miner)(embeddings, labels).item() != pytest.approx(unmined, rel=1e-3)


@shapes
@miners
@pytest.mark.parametrize("params", [{}, dict(soft_margin=True, squared=False)], ids=["hinge", "soft"])
def test_triplet_with_any_miner(shape, miner, miner_params, params):
    embeddings, labels = make_batch(CLASS_COUNTS[shape])
    loss = build_loss("triplet", miner=spec(miner, miner_params), **params)
    triplets = mref.triplets_of(reference_mined(miner, embeddings, labels, **miner_params))
    reduction = "mean_nonzero" if miner == "batch_all" else "mean"
    expected = ref.triplet_over(embeddings, triplets, reduction=reduction, **params)
    assert loss(embeddings, labels).item() == pytest.approx(expected, **TOL)


@shapes
def test_triplet_without_a_miner_is_batch_all(shape):
    embeddings, labels = make_batch(CLASS_COUNTS[shape])
    value = build_loss("triplet", miner=None)(embeddings, labels).item()
    assert value == pytest.approx(ref.triplet(embeddings, labels, mining="batch_all"), **TOL)


@shapes
@miners
def test_lifted_with_a_miner(shape, miner, miner_params):
    embeddings, labels = make_batch(CLASS_COUNTS[shape])
    loss = build_loss("lifted", miner=spec(miner, miner_params))
    positive, negative = mref.pairs_of(reference_mined(miner, embeddings, labels, **miner_params))
    assert loss(embeddings, labels).item() == pytest.approx(ref.lifted_over(embeddings, positive, negative), **TOL)


@shapes
@miners
def test_multi_similarity_with_any_miner(shape, miner, miner_params):
    embeddings, labels = make_batch(CLASS_COUNTS[shape])
    loss = build_loss("multi_similarity", miner=spec(miner, miner_params))
    positive, negative = mref.pairs_of(reference_mined(miner, embeddings, labels, **miner_params))
    expected = ref.multi_similarity_over(embeddings, positive, negative)
    assert loss(embeddings, labels).item() == pytest.approx(expected, **TOL)


@pytest.mark.parametrize("name", ["contrastive", "lifted", "multi_similarity", "triplet"])
@pytest.mark.parametrize("miner", ["batch_hard", "semi_hard", "multi_similarity", "batch_all"])
def test_mined_losses_backpropagate_finite_gradients(name, miner):
    embeddings, labels = make_batch(CLASS_COUNTS["ragged"])
    embeddings.requires_grad_(True)
    build_loss(name, miner=miner)(embeddings, labels).backward()
    assert torch.isfinite(embeddings.grad).all() and embeddings.grad.abs().sum() > 0


# --- pml 2.9, with pml's own miners ---------------------------------------------------------
@pytest.mark.parametrize("shape", ["4x3", "3x4", "5x2"])
def test_triplet_batch_hard_equals_pml(shape):
    embeddings, labels = make_batch(CLASS_COUNTS[shape])
    distance = LpDistance(normalize_embeddings=True, p=2, power=2)
    pml = pml_losses.TripletMarginLoss(margin=0.2, distance=distance, reducer=MeanReducer())
    expected = pml(embeddings, labels, pml_miners.BatchHardMiner(distance=distance)(embeddings, labels))
    value = build_loss("triplet", miner="batch_hard")(embeddings, labels)
    assert value.item() == pytest.approx(expected.item(), **TOL)


@pytest.mark.parametrize("shape", ["4x3", "3x4", "5x2"])
@pytest.mark.parametrize("miner", ["none", "batch_hard", "multi_similarity"])
def test_contrastive_equals_pml(shape, miner):
    embeddings, labels = make_batch(CLASS_COUNTS[shape])
    pml_miner = {
        "none": None,
        "batch_hard": pml_miners.BatchHardMiner(),
        "multi_similarity": pml_miners.MultiSimilarityMiner(epsilon=0.1),
    }[miner]
    mined = None if pml_miner is None else pml_miner(embeddings, labels)
    pml = pml_losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0, distance=LpDistance(normalize_embeddings=True))
    value = build_loss("contrastive", miner=None if miner == "none" else miner)(embeddings, labels)
    assert value.item() == pytest.approx(pml(embeddings, labels, mined).item(), **TOL)


@pytest.mark.parametrize("shape", ["4x3", "3x4", "5x2", "ragged"])
@pytest.mark.parametrize("epsilon", [0.1, 0.3])
def test_multi_similarity_equals_pml(shape, epsilon):
    embeddings, labels = make_batch(CLASS_COUNTS[shape])
    mined = pml_miners.MultiSimilarityMiner(epsilon=epsilon)(embeddings, labels)
    pml = pml_losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5, distance=CosineSimilarity())
    value = build_loss("multi_similarity", epsilon=epsilon)(embeddings, labels)
    assert value.item() == pytest.approx(pml(embeddings, labels, mined).item(), **TOL)


# --- the older `mining` and the miner specs -------------------------------------------------
@pytest.mark.parametrize("mining", ["batch_all", "batch_hard", "semi_hard"])
def test_mining_keeps_its_meaning(mining):
    embeddings, labels = make_batch(CLASS_COUNTS["ragged"])
    old = build_loss("triplet", mining=mining)(embeddings, labels)
    new = build_loss("triplet", miner=mining)(embeddings, labels)
    assert old.item() == new.item() == pytest.approx(ref.triplet(embeddings, labels, mining=mining), **TOL)


def test_mining_and_another_miner_conflict():
    with pytest.raises(ValueError, match="not both"):
        build_loss("triplet", miner="batch_all", mining="batch_hard")
    build_loss("triplet", miner="batch_hard", mining="batch_hard")  # the same choice twice is fine


@pytest.mark.parametrize("name", ["triplet", "contrastive", "lifted", "multi_similarity"])
def test_a_bad_miner_is_named(name):
    with pytest.raises(ValueError, match="'hardest'") as error:
        build_loss(name, miner="hardest")
    assert "batch_hard" in str(error.value)
    with pytest.raises(ValueError, match="'margine'"):
        build_loss(name, miner={"name": "batch_all", "params": {"margine": 0.1}})


def test_multi_similarity_epsilon_sets_its_miner_and_null_turns_mining_off():
    embeddings, labels = make_batch(CLASS_COUNTS["4x3"])
    assert build_loss("multi_similarity", epsilon=0.3).miner.epsilon == 0.3
    assert build_loss("multi_similarity", epsilon=None).miner is None
    assert build_loss("multi_similarity", miner=None).miner is None
    unmined = build_loss("multi_similarity", miner=None)(embeddings, labels).item()
    assert unmined == pytest.approx(ref.multi_similarity(embeddings, labels, epsilon=None), **TOL)
