"""``loss.diagnostics()``: stable names, floats, values equal to slow loops over the same
batch, nothing kept from an earlier batch, and no graph kept alive."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from components.losses import available_losses, build_loss, loss_class
from components.losses.base import CONTINUOUS_LABELS, MetricLoss, vector_statistics
from tests.losses import loss_references as ref
from tests.losses.test_loss_references import CLASS_COUNTS, make_batch
from tests.miners import miner_references as mref

#: The names each loss reports after a forward (without ``detailed``). A new loss need not be
#: listed: the stability test below runs every registered loss.
EXPECTED = {
    "cross_entropy": {"batch_accuracy", "weight_norm_mean", "weight_norm_min", "weight_cosine_mean"},
    "cosine_softmax": {"batch_accuracy", "weight_norm_mean", "weight_norm_min", "weight_cosine_mean", "logit_scale"},
    "warp": {"batch_accuracy", "violating_fraction", "mean_draws", "weight_norm_mean", "weight_norm_min",
             "weight_cosine_mean"},
    "triplet": {"mined_triplets", "active_triplet_fraction"},
    "contrastive": {"mined_pairs", "active_pair_fraction", "active_positive_fraction", "active_negative_fraction"},
    "lifted": {"mined_pairs", "active_pair_fraction"},
    "multi_similarity": {"mined_pairs", "mined_pair_fraction"},
    "npair": {"num_pairs"},
    "proxy_nca": {"proxy_norm_mean", "proxy_norm_min", "proxy_cosine_mean"},
    "proxy_anchor": {"proxy_norm_mean", "proxy_norm_min", "proxy_cosine_mean"},
    "soft_triple": {"proxy_norm_mean", "proxy_norm_min", "proxy_cosine_mean"},
    "hierarchical_proxy": {"proxy_norm_mean", "proxy_norm_min", "proxy_cosine_mean", "coarse_groups", "reassignments"},
    "smooth_ap": set(),
    "log_ratio": set(),
}


def build(name, **params):
    shape = dict(num_classes=5, embedding_dim=6) if loss_class(name).has_parameters else {}
    return build_loss(name, **shape, **params)


def labels_for(name, labels):
    return torch.linspace(0, 1, len(labels)) if loss_class(name).label_kind == CONTINUOUS_LABELS else labels


def test_every_listed_loss_is_registered():
    assert set(EXPECTED) <= set(available_losses())


@pytest.mark.parametrize("name", available_losses())
@pytest.mark.parametrize("labels", [[0, 0, 1, 1, 2, 2, 3, 4], [1, 1, 1, 1], [0, 1, 2, 3]],
                         ids=["normal", "one-class", "all-distinct"])
def test_names_are_stable_and_values_are_finite_floats(name, labels):
    loss = build(name)
    loss(torch.randn(8, 6), labels_for(name, torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])))
    names_on_a_normal_batch = set(loss.diagnostics())
    embeddings = torch.randn(len(labels), 6, requires_grad=True)
    loss(embeddings, labels_for(name, torch.tensor(labels))).backward()
    diagnostics = loss.diagnostics()
    assert set(diagnostics) == names_on_a_normal_batch == EXPECTED.get(name, names_on_a_normal_batch)
    assert all(type(v) is float and math.isfinite(v) for v in diagnostics.values())
    detailed = loss.diagnostics(detailed=True)
    assert set(detailed) >= set(diagnostics)
    assert all(not isinstance(v, torch.Tensor) or v.grad_fn is None for v in getattr(loss, "_recorded", {}).values())


def test_nothing_survives_from_an_earlier_batch():
    loss = build("triplet")
    embeddings, labels = make_batch(CLASS_COUNTS["4x3"])
    loss(embeddings, labels)
    assert loss.diagnostics()["mined_triplets"] > 0
    loss(embeddings[:2], torch.tensor([0, 1]))
    assert loss.diagnostics() == {"mined_triplets": 0.0, "active_triplet_fraction": 0.0}


def test_a_loss_without_diagnostics_reports_an_empty_dict():
    class Plain(MetricLoss):
        def compute_loss(self, embeddings, labels):
            return embeddings.sum()

    loss = Plain()
    assert loss.diagnostics() == {}
    loss(torch.randn(3, 2), torch.tensor([0, 1, 1]))
    assert loss.diagnostics() == {}


# --- values against slow loops --------------------------------------------------------------
@pytest.mark.parametrize("shape", list(CLASS_COUNTS))
@pytest.mark.parametrize("miner", ["semi_hard", "batch_hard", "batch_all"])
@pytest.mark.parametrize("soft_margin", [False, True])
def test_triplet_counts_mined_and_active_triplets(shape, miner, soft_margin):
    embeddings, labels = make_batch(CLASS_COUNTS[shape])
    loss = build_loss("triplet", miner=miner, soft_margin=soft_margin)
    loss(embeddings, labels)
    d = mref.dissimilarity(embeddings, "squared_euclidean")
    triplets = getattr(mref, miner)(d, labels)
    margin = 0.0 if soft_margin else 0.2
    active = sum(d[a][p] - d[a][k] + margin > 0 for a, p, k in triplets)
    diagnostics = loss.diagnostics()
    assert diagnostics["mined_triplets"] == len(triplets)
    assert diagnostics["active_triplet_fraction"] == pytest.approx(active / len(triplets))


@pytest.mark.parametrize("shape", list(CLASS_COUNTS))
@pytest.mark.parametrize("miner", [None, "batch_hard"])
def test_contrastive_counts_pairs_and_active_ones(shape, miner):
    embeddings, labels = make_batch(CLASS_COUNTS[shape])
    loss = build_loss("contrastive", pos_margin=0.3, neg_margin=1.2, miner=miner)
    loss(embeddings, labels)
    d = mref.dissimilarity(embeddings)
    if miner is None:
        n = len(labels)
        positive = {(i, j) for i in range(n) for j in range(n) if i != j and labels[i] == labels[j]}
        negative = {(i, j) for i in range(n) for j in range(n) if labels[i] != labels[j]}
    else:
        positive, negative = mref.pairs_of(mref.batch_hard(d, labels))
    active_pos = sum(d[i][j] > 0.3 for i, j in positive)
    active_neg = sum(d[i][j] < 1.2 for i, j in negative)
    diagnostics = loss.diagnostics()
    assert diagnostics["mined_pairs"] == len(positive) + len(negative)
    assert diagnostics["active_positive_fraction"] == pytest.approx(active_pos / len(positive))
    assert diagnostics["active_negative_fraction"] == pytest.approx(active_neg / len(negative))
    assert diagnostics["active_pair_fraction"] == pytest.approx((active_pos + active_neg) / (len(positive) + len(negative)))


def test_multi_similarity_counts_its_mined_pairs():
    embeddings, labels = make_batch(CLASS_COUNTS["4x3"])
    loss = build_loss("multi_similarity", epsilon=0.1)
    loss(embeddings, labels)
    positive, negative = mref.multi_similarity(mref.dissimilarity(embeddings, "cosine"), labels, 0.1)
    diagnostics = loss.diagnostics()
    assert diagnostics["mined_pairs"] == len(positive) + len(negative)
    assert diagnostics["mined_pair_fraction"] == pytest.approx((len(positive) + len(negative)) / (12 * 11))


def test_lifted_counts_active_pairs():
    embeddings, labels = make_batch(CLASS_COUNTS["ragged"])
    loss = build_loss("lifted", margin=0.5)
    loss(embeddings, labels)
    x, y = ref.normalise(embeddings), labels.tolist()
    n = len(y)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j and y[i] == y[j]]
    active = 0
    for i, j in pairs:
        exps = [math.exp(0.5 - ref.dist(x[a], x[k])) for a in (i, j) for k in range(n) if y[k] != y[a]]
        active += math.log(sum(exps)) + ref.dist(x[i], x[j]) > 0
    assert loss.diagnostics() == pytest.approx({"mined_pairs": len(pairs), "active_pair_fraction": active / len(pairs)})


def numpy_vector_stats(vectors):
    v = vectors.detach().double().numpy()
    norms = np.linalg.norm(v, axis=1)
    unit = v / norms[:, None]
    cos = unit @ unit.T
    off = ~np.eye(len(v), dtype=bool)
    return norms.mean(), norms.min(), cos[off].mean(), cos[off].max()


@pytest.mark.parametrize("name", ["proxy_anchor", "proxy_nca", "hierarchical_proxy"])
def test_proxy_statistics_equal_numpy(name):
    loss = build(name).double()
    loss(*make_batch(CLASS_COUNTS["4x3"], dim=6))
    mean, low, cos_mean, cos_max = numpy_vector_stats(loss.proxies)
    diagnostics = loss.diagnostics(detailed=True)
    assert diagnostics["proxy_norm_mean"] == pytest.approx(mean, rel=1e-5)
    assert diagnostics["proxy_norm_min"] == pytest.approx(low, rel=1e-5)
    assert diagnostics["proxy_cosine_mean"] == pytest.approx(cos_mean, abs=1e-5)
    assert diagnostics["proxy_cosine_max"] == pytest.approx(cos_max, abs=1e-5)


def test_vector_statistics_in_blocks_equal_one_block():
    vectors = torch.randn(37, 5)
    one = vector_statistics(vectors, "v", detailed=True)
    blocks = vector_statistics(vectors, "v", detailed=True, block=8)
    assert {k: v.item() for k, v in one.items()} == pytest.approx({k: v.item() for k, v in blocks.items()})
    assert numpy_vector_stats(vectors)[3] == pytest.approx(one["v_cosine_max"].item(), abs=1e-6)


def test_soft_triple_reports_its_centres():
    loss = build("soft_triple", centers_per_class=3).double()
    loss(*make_batch(CLASS_COUNTS["4x3"], dim=6))
    mean, _, _, cos_max = numpy_vector_stats(loss.centers.t())
    diagnostics = loss.diagnostics(detailed=True)
    assert diagnostics["proxy_norm_mean"] == pytest.approx(mean, rel=1e-5)
    assert diagnostics["proxy_cosine_max"] == pytest.approx(cos_max, abs=1e-5)


@pytest.mark.parametrize("name, params", [("cross_entropy", {}), ("cosine_softmax", {"learn_scale": True}),
                                          ("warp", {"seed": 0})])
def test_classifier_losses_report_accuracy_and_weight_norms(name, params):
    loss = build(name, **params).double()
    embeddings, labels = make_batch(CLASS_COUNTS["ragged"], dim=6)
    loss(embeddings, labels)
    accuracy = (loss.logits(embeddings).argmax(1) == labels).double().mean().item()
    mean, low, _, _ = numpy_vector_stats(loss.classifier.weight)
    diagnostics = loss.diagnostics()
    assert diagnostics["batch_accuracy"] == pytest.approx(accuracy)
    assert diagnostics["weight_norm_mean"] == pytest.approx(mean, rel=1e-5)
    assert diagnostics["weight_norm_min"] == pytest.approx(low, rel=1e-5)
    if name == "cosine_softmax":
        assert diagnostics["logit_scale"] == 16.0


def test_warp_reports_the_draws_of_the_loop():
    from components.losses.warp import draw_negative_classes

    loss = build("warp", seed=3).double()
    embeddings, labels = make_batch(CLASS_COUNTS["4x3"], dim=6)
    loss(embeddings, labels)
    scores = loss.logits(embeddings)
    draws = draw_negative_classes(labels, 5, loss.max_trials, torch.Generator().manual_seed(3))
    found, counts = [], []
    for b in range(len(labels)):
        hits = [t for t in range(draws.shape[1]) if scores[b, draws[b, t]] > scores[b, labels[b]] - 1.0]
        found.append(bool(hits))
        if hits:
            counts.append(hits[0] + 1)
    diagnostics = loss.diagnostics()
    assert diagnostics["violating_fraction"] == pytest.approx(sum(found) / len(found))
    assert diagnostics["mean_draws"] == pytest.approx(sum(counts) / max(len(counts), 1))


def test_hierarchical_reports_groups_and_reassignments():
    loss = build("hierarchical_proxy", num_coarse=2, reassign_every=1).double()
    embeddings, labels = make_batch(CLASS_COUNTS["4x3"], dim=6)
    loss(embeddings, labels)
    loss(embeddings, labels)  # the second training forward re-runs k-means
    diagnostics = loss.diagnostics()
    assert diagnostics["coarse_groups"] == 2.0 and diagnostics["reassignments"] == 1.0
