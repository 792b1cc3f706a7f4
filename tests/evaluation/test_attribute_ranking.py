"""Attribute ranking (continuous labels) against slow, independent restatements."""

import math

import numpy as np
import pytest

from components import constants as C
from components.evaluation.attributes import attribute_ranking_metrics

NDCG = C.attribute_ndcg_at(10)


def _slow_spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of average ranks, written out."""
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for t in range(i, j + 1):
                r[order[t]] = (i + j) / 2 + 1
            i = j + 1
        return np.array(r)
    a, b = ranks(list(x)), ranks(list(y))
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


def _slow_ndcg(relevance: np.ndarray, score: np.ndarray, k: int) -> float:
    order = np.argsort(-score, kind="stable")[:k]
    ideal = np.sort(relevance)[::-1][:k]
    dcg = sum(relevance[j] / math.log2(i + 2) for i, j in enumerate(order))
    return dcg / sum(r / math.log2(i + 2) for i, r in enumerate(ideal))


def _standardised(labels):
    return (labels - labels.mean(0)) / labels.std(0)


def test_matches_a_slow_restatement_on_random_data():
    rng = np.random.default_rng(0)
    labels = rng.normal(size=(60, 2)) * [3.0, 0.2] + [5.0, 1.8]     # length-like and width-like
    embeddings = _standardised(labels) + 0.5 * rng.normal(size=(60, 2))
    got = attribute_ranking_metrics(embeddings, labels, k=10, max_queries=60)
    z = _standardised(labels)
    rhos, ndcgs = [], []
    for q in range(60):
        others = [i for i in range(60) if i != q]
        e = np.linalg.norm(embeddings[others] - embeddings[q], axis=1)
        a = np.linalg.norm(z[others] - z[q], axis=1)
        rhos.append(_slow_spearman(e, a))
        ndcgs.append(_slow_ndcg(1 / (1 + a), -e, 10))
    assert got[C.METRIC_ATTRIBUTE_SPEARMAN] == pytest.approx(np.mean(rhos), abs=1e-9)
    assert got[NDCG] == pytest.approx(np.mean(ndcgs), abs=1e-9)


def test_an_embedding_equal_to_the_attributes_is_perfect_and_noise_is_not():
    rng = np.random.default_rng(1)
    labels = rng.uniform(size=(200, 2))
    perfect = attribute_ranking_metrics(_standardised(labels) * 7.0 + 3.0, labels)   # scale, shift do not matter
    assert perfect[C.METRIC_ATTRIBUTE_SPEARMAN] == pytest.approx(1.0) and perfect[NDCG] == pytest.approx(1.0)
    noise = attribute_ranking_metrics(rng.normal(size=(200, 16)), labels)
    assert abs(noise[C.METRIC_ATTRIBUTE_SPEARMAN]) < 0.1 and noise[NDCG] < 0.9


def test_units_do_not_decide_the_distance():
    rng = np.random.default_rng(2)
    labels = rng.uniform(size=(100, 2))
    rescaled = labels * [1000.0, 1.0]     # the first attribute in other units
    a, b = attribute_ranking_metrics(labels, labels), attribute_ranking_metrics(labels, rescaled)
    assert a == pytest.approx(b)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="one row per item"):
        attribute_ranking_metrics(np.zeros((5, 2)), np.zeros((4, 1)))
    with pytest.raises(ValueError, match="finite"):
        attribute_ranking_metrics(np.zeros((5, 2)), np.array([1, 2, np.nan, 4, 5.0]))


def test_attributes_are_measured_only_when_every_item_has_the_same_numeric_ones():
    from components.evaluation.model_eval import attribute_matrix

    metas = [{C.ATTRIBUTES: {"width_m": 1.8, "length_m": 4.5}}, {C.ATTRIBUTES: {"length_m": 5.0, "width_m": 1.9}}]
    assert attribute_matrix(metas).tolist() == [[4.5, 1.8], [5.0, 1.9]]      # names sorted
    assert attribute_matrix([*metas, {C.ATTRIBUTES: {"length_m": 4.0}}]) is None
    assert attribute_matrix([*metas, {}]) is None
    assert attribute_matrix([{C.ATTRIBUTES: {"length_m": "long"}}] * 3) is None
    assert attribute_matrix([]) is None
