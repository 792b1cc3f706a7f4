"""The streaming evaluator against scikit-learn and slow per-query references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve

from components.constants import DEFAULT_RECALL_KS, METRIC_MAP, METRIC_MAP_AT_R, METRIC_R_PRECISION, recall_at
from components.evaluation import (
    NUM_QUERIES,
    NUM_QUERIES_WITHOUT_RELEVANT,
    PER_CLASS_AP,
    PR_PRECISION,
    PR_RECALL,
    _kernels,
    evaluate_retrieval,
    retrieval_metrics,
)
from components.evaluation._kernels import NumpyKernels, TorchKernels
from tests.evaluation import retrieval_reference as ref

KS = (1, 2, 4, 8)
KERNELS = pytest.mark.parametrize("backend", ["numpy", "torch"])


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def integer_embeddings(n: int, dim: int, low: int, high: int, seed: int) -> np.ndarray:
    """Small integer coordinates: every dot product is exact in float32 whatever the summation
    order, so references can recompute identical scores; a narrow range gives many ties."""
    return np.random.default_rng(seed).integers(low, high + 1, size=(n, dim)).astype(np.float32)


def labels_with_singletons(n: int, classes: int, singletons: int, seed: int) -> np.ndarray:
    labels = np.random.default_rng(seed).integers(0, classes, n)
    labels[:singletons] = np.arange(classes, classes + singletons)  # classes with one image
    return labels


@KERNELS
def test_average_precision_matches_sklearn_per_query_on_tie_free_data(backend):
    features = unit_vectors(300, 16, seed=0)
    labels = np.random.default_rng(1).integers(0, 7, 300)
    # sklearn gets the very scores the evaluator ranks (same matrix product), so any
    # difference would come from the ranking / AP computation.
    kernels = TorchKernels() if backend == "torch" else NumpyKernels()
    if backend == "torch":
        tensor = torch.from_numpy(features)
        scores = kernels.matmul_transposed(tensor, tensor).numpy()
    else:
        scores = kernels.matmul_transposed(features, features).copy()

    expected = []
    for q in range(300):
        keep = np.arange(300) != q
        relevant = labels[keep] == labels[q]
        row = scores[q, keep]
        # Premise: tie-free float scores (the tie cases have their own tests below).
        _, group, size = np.unique(row, return_inverse=True, return_counts=True)
        assert not (relevant & (size[group] > 1)).any()
        expected.append(average_precision_score(relevant, row))

    result = evaluate_retrieval(features, labels, normalize=False, backend=backend)
    np.testing.assert_allclose(result.average_precision, expected, rtol=0, atol=1e-6)
    assert result.metrics[METRIC_MAP] == pytest.approx(np.mean(expected), abs=1e-6)


@KERNELS
def test_all_metrics_match_brute_force_on_data_with_ties_and_singletons(backend):
    features = integer_embeddings(260, 3, -2, 2, seed=3)  # heavy ties, zero vectors included
    labels = labels_with_singletons(260, 12, singletons=5, seed=4)
    rows = ref.per_query_metrics(features @ features.T, labels, KS)

    result = evaluate_retrieval(features, labels, KS, normalize=False, return_pr_curve=True,
                                backend=backend)
    expected = ref.summarise(rows, KS)
    assert result.metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert result.metrics[key] == pytest.approx(value, abs=1e-12), key
    assert result.metrics[NUM_QUERIES_WITHOUT_RELEVANT] == 5.0
    per_query = np.array([np.nan if row is None else row["ap"] for row in rows])
    np.testing.assert_allclose(result.average_precision, per_query, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.pr_precision, ref.mean_pr_curve(rows), rtol=0, atol=1e-12)


def metrics_of_every_tie_order(scores: np.ndarray, labels: np.ndarray, ks) -> list[dict]:
    """Per query: MAP@R, R-precision and R@K averaged over EVERY order of the gallery's tied
    items (all permutations, each ranked by score and then by its position in the
    permutation), each order scored with the plain tie-free definitions."""
    n = labels.shape[0]
    out = []
    for q in range(n):
        gallery = np.array([i for i in range(n) if i != q])
        orders = np.array(list(itertools.permutations(range(gallery.shape[0]))))  # (P, G) positions
        # Rank by descending score, then by the permutation: scores are small integers.
        keys = -scores[q, gallery][None, :] * (10 * gallery.shape[0]) + orders
        relevant = (labels[gallery] == labels[q])[np.argsort(keys, axis=1)]
        r = int(relevant[0].sum())
        if r == 0:
            continue
        hits_so_far = np.cumsum(relevant, axis=1)
        precision = hits_so_far / np.arange(1, gallery.shape[0] + 1)
        out.append(dict(
            map_at_r=float((precision[:, :r] * relevant[:, :r]).sum(axis=1).mean() / r),
            r_precision=float(relevant[:, :r].sum(axis=1).mean() / r),
            recall={k: float(relevant[:, :k].any(axis=1).mean()) for k in ks},
        ))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cut_off_metrics_are_the_mean_over_every_order_of_tied_items(seed):
    # 8 gallery items per query with coordinates in {-1, 0, 1}: most scores are tied, and tie
    # groups straddle the R and K cut-offs. 8! orders per query are enumerated.
    features = integer_embeddings(9, 2, -1, 1, seed=30 + seed)
    labels = np.random.default_rng(40 + seed).integers(0, 3, 9)
    scores = features @ features.T
    ks = (1, 2, 3, 5, 8)
    expected = metrics_of_every_tie_order(scores, labels, ks)

    metrics = retrieval_metrics(features, labels, ks, normalize=False)
    assert metrics[NUM_QUERIES] == len(expected)
    assert metrics[METRIC_MAP_AT_R] == pytest.approx(np.mean([e["map_at_r"] for e in expected]), abs=1e-12)
    assert metrics[METRIC_R_PRECISION] == pytest.approx(np.mean([e["r_precision"] for e in expected]), abs=1e-12)
    for k in ks:
        assert metrics[recall_at(k)] == pytest.approx(np.mean([e["recall"][k] for e in expected]), abs=1e-12), k
    assert metrics[recall_at(8)] == 1.0  # the whole gallery


def test_collapsed_embeddings_score_chance_on_sorted_and_shuffled_input():
    # Every item has the same embedding: all scores tie, so every metric is chance. The old
    # tie-break by gallery column gave mAP 0.21 on class-sorted input and 0.11 shuffled.
    labels = np.repeat(np.arange(10), 40)
    features = np.ones((400, 16), dtype=np.float32)
    order = np.random.default_rng(50).permutation(400)
    sorted_input = evaluate_retrieval(features, labels, KS, return_pr_curve=True)
    shuffled = evaluate_retrieval(features[order], labels[order], KS, return_pr_curve=True)

    chance = 39 / 399  # relevant share of each query's gallery
    expected_ap = np.mean([average_precision_score(np.delete(labels == labels[q], q), np.zeros(399))
                           for q in range(400)])
    assert expected_ap == pytest.approx(chance, abs=1e-12)
    for result in (sorted_input, shuffled):
        assert result.metrics[METRIC_MAP] == pytest.approx(expected_ap, abs=1e-12)
        assert result.metrics[METRIC_R_PRECISION] == pytest.approx(chance, abs=1e-12)
        assert result.metrics[recall_at(1)] == pytest.approx(chance, abs=1e-12)
        # P(no hit in the top 2) = C(360, 2) / C(399, 2)
        assert result.metrics[recall_at(2)] == pytest.approx(1 - (360 * 359) / (399 * 398), abs=1e-12)
        np.testing.assert_allclose(result.pr_precision, chance, rtol=0, atol=1e-12)
    for key, value in sorted_input.metrics.items():
        assert shuffled.metrics[key] == pytest.approx(value, abs=1e-12), key
    expected = ref.summarise(ref.per_query_metrics(features @ features.T, labels, KS), KS)
    assert sorted_input.metrics[METRIC_MAP_AT_R] == pytest.approx(expected["MAP@R"], abs=1e-12)


def quantised_unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """Random directions rounded to multiples of 1/4: dot products are multiples of 1/16, exact
    in float32 in any summation order, and many of them tie."""
    return np.round(unit_vectors(n, dim, seed) * 4).astype(np.float32) / 4


@KERNELS
def test_average_precision_matches_sklearn_per_query_with_many_exact_ties(backend):
    features = quantised_unit_vectors(300, 6, seed=51)
    labels = np.random.default_rng(52).integers(0, 8, 300)
    scores = features @ features.T  # exact, so identical to the scores the evaluator ranks
    expected, tied = [], 0
    for q in range(300):
        keep = np.arange(300) != q
        relevant = labels[keep] == labels[q]
        _, group, size = np.unique(scores[q, keep], return_inverse=True, return_counts=True)
        tied += bool((relevant & (size[group] > 1)).any())
        expected.append(average_precision_score(relevant, scores[q, keep]))
    assert tied == 300  # premise: every query has a relevant item inside a tie

    result = evaluate_retrieval(features, labels, normalize=False, backend=backend)
    np.testing.assert_allclose(result.average_precision, expected, rtol=0, atol=1e-12)
    assert result.metrics[METRIC_MAP] == pytest.approx(np.mean(expected), abs=1e-12)


@KERNELS
def test_pr_curve_matches_sklearn_precision_recall_curve_with_ties(backend):
    features = quantised_unit_vectors(200, 5, seed=53)
    labels = np.random.default_rng(54).integers(0, 6, 200)
    scores = features @ features.T
    levels = np.linspace(0.0, 1.0, 21)
    curves = []
    for q in range(200):
        keep = np.arange(200) != q
        precision, recall, _ = precision_recall_curve(labels[keep] == labels[q], scores[q, keep])
        # The last point (recall 0, precision 1) is sklearn's convention for the empty
        # ranking, not a threshold: the evaluator's curve starts at the first threshold.
        precision, recall = precision[:-1], recall[:-1]
        curves.append([precision[recall >= level - 1e-12].max() for level in levels])
    result = evaluate_retrieval(features, labels, normalize=False, return_pr_curve=True, pr_points=21,
                                backend=backend)
    np.testing.assert_allclose(result.pr_precision, np.mean(curves, axis=0), rtol=0, atol=1e-12)


@KERNELS
def test_metrics_do_not_depend_on_the_order_of_items(backend):
    features = integer_embeddings(300, 3, -2, 2, seed=55)
    labels = labels_with_singletons(300, 15, singletons=4, seed=56)
    query_mask = np.random.default_rng(57).random(300) < 0.6
    gallery_mask = np.random.default_rng(58).random(300) < 0.8
    order = np.random.default_rng(59).permutation(300)
    options = dict(normalize=False, return_pr_curve=True, backend=backend)
    first = evaluate_retrieval(features, labels, KS, query_mask=query_mask, gallery_mask=gallery_mask, **options)
    again = evaluate_retrieval(features[order], labels[order], KS, query_mask=query_mask[order],
                               gallery_mask=gallery_mask[order], **options)
    for key, value in first.metrics.items():
        assert again.metrics[key] == pytest.approx(value, abs=1e-12), key
    np.testing.assert_allclose(again.pr_precision, first.pr_precision, rtol=0, atol=1e-12)
    # Per query: the same item gets the same AP wherever it sits in the input.
    ap_by_item = dict(zip(first.query_index.tolist(), first.average_precision.tolist()))
    for position, item in zip(again.query_index, order[again.query_index]):
        value = again.average_precision[np.searchsorted(again.query_index, position)]
        np.testing.assert_allclose(value, ap_by_item[item], rtol=0, atol=1e-12)


@KERNELS
def test_chunk_and_block_sizes_do_not_change_results(backend, monkeypatch):
    features = integer_embeddings(400, 3, -3, 3, seed=7)
    labels = labels_with_singletons(400, 20, singletons=3, seed=8)
    baseline = retrieval_metrics(features, labels, normalize=False, backend=backend)
    # Tiny CPU parts and blocks: many matrix products and blocks per chunk, on two threads.
    monkeypatch.setattr(_kernels, "CPU_PART_ELEMENTS", 4000)
    monkeypatch.setattr(_kernels, "CPU_BLOCK_ELEMENTS", 1500)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    for chunk_size in (1, 7, 64, 399, 10_000):
        again = retrieval_metrics(features, labels, normalize=False, chunk_size=chunk_size,
                                  backend=backend)
        assert again == baseline, chunk_size


@KERNELS
def test_query_and_gallery_masks(backend):
    features = integer_embeddings(300, 3, -3, 3, seed=9)
    labels = np.random.default_rng(10).integers(0, 10, 300)
    rng = np.random.default_rng(11)
    overlapping = (rng.random(300) < 0.5, rng.random(300) < 0.7)   # items in both never see themselves
    query_only = np.arange(300) < 100
    disjoint = (query_only, ~query_only)
    for query_mask, gallery_mask in (overlapping, disjoint):
        rows = ref.per_query_metrics(features @ features.T, labels, KS, query_mask, gallery_mask)
        got = retrieval_metrics(features, labels, KS, query_mask=query_mask, gallery_mask=gallery_mask,
                                normalize=False, backend=backend)
        expected = ref.summarise(rows, KS)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-12), key


def test_only_a_query_mask_uses_every_item_as_gallery():
    features = integer_embeddings(120, 3, -3, 3, seed=12)
    labels = np.random.default_rng(13).integers(0, 6, 120)
    query_mask = np.arange(120) % 3 == 0
    got = retrieval_metrics(features, labels, KS, query_mask=query_mask, normalize=False)
    expected = ref.summarise(ref.per_query_metrics(features @ features.T, labels, KS, query_mask, None), KS)
    assert got[METRIC_MAP] == pytest.approx(expected["mAP"], abs=1e-12)
    assert got[NUM_QUERIES] == 40.0


def test_torch_and_numpy_inputs_and_label_types_agree():
    features = unit_vectors(200, 8, seed=14)
    labels = np.random.default_rng(15).integers(0, 5, 200)
    from_numpy = retrieval_metrics(features, labels)
    from_torch = retrieval_metrics(torch.from_numpy(features), torch.from_numpy(labels))
    names = np.array([f"class-{label}" for label in labels])
    from_strings = retrieval_metrics(features.astype(np.float64), names)
    assert from_numpy == from_torch == from_strings


def test_normalisation_makes_results_scale_invariant():
    features = unit_vectors(200, 8, seed=16)
    labels = np.random.default_rng(17).integers(0, 5, 200)
    scales = np.random.default_rng(18).uniform(0.25, 4.0, (200, 1)).astype(np.float32)
    normalised = retrieval_metrics(features, labels)
    rescaled = retrieval_metrics(features * scales, labels)  # normalize=True is the default
    for key, value in normalised.items():
        assert rescaled[key] == pytest.approx(value, abs=1e-6), key


def test_default_metric_names_and_extra_outputs():
    features = unit_vectors(150, 8, seed=19)
    labels = np.array(["car", "truck", "bus"])[np.random.default_rng(20).integers(0, 3, 150)]
    metrics = retrieval_metrics(features, labels, return_per_class=True, return_pr_curve=True)
    for name in (METRIC_MAP, METRIC_MAP_AT_R, METRIC_R_PRECISION, *map(recall_at, DEFAULT_RECALL_KS)):
        assert isinstance(metrics[name], float) and 0.0 <= metrics[name] <= 1.0
    per_class = metrics[PER_CLASS_AP]
    assert set(per_class) == {"car", "truck", "bus"} and all(isinstance(k, str) for k in per_class)
    recall, precision = metrics[PR_RECALL], metrics[PR_PRECISION]
    assert recall.shape == precision.shape == (101,)
    assert recall[0] == 0.0 and recall[-1] == 1.0
    assert np.all(np.diff(precision) <= 1e-12)  # interpolated precision never increases
    plain = retrieval_metrics(features, labels)
    assert all(isinstance(value, float) for value in plain.values())


def test_no_query_with_a_relevant_item_gives_nan_metrics_and_counts():
    features = unit_vectors(5, 4, seed=21)
    metrics = retrieval_metrics(features, [0, 1, 2, 3, 4])
    assert np.isnan(metrics[METRIC_MAP])
    assert metrics[NUM_QUERIES] == 0.0 and metrics[NUM_QUERIES_WITHOUT_RELEVANT] == 5.0


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda f, y: retrieval_metrics(f[0], y), ValueError, "embeddings must be 2-d"),
        (lambda f, y: retrieval_metrics(f, y[:-1]), ValueError, "labels has 9 entries"),
        (lambda f, y: retrieval_metrics(np.full((10, 4), np.nan), y), ValueError, "NaN"),
        (lambda f, y: retrieval_metrics("x", y), TypeError, "embeddings must be"),
        (lambda f, y: retrieval_metrics(f, y, ks=(0, 1)), ValueError, "ks must be positive"),
        (lambda f, y: retrieval_metrics(f, y, query_mask=np.ones(10)), TypeError, "query_mask must have dtype bool"),
        (lambda f, y: retrieval_metrics(f, y, gallery_mask=np.zeros(10, bool)), ValueError,
         "gallery_mask selects no item"),
        (lambda f, y: retrieval_metrics(f, y, chunk_size=0), ValueError, "chunk_size"),
        (lambda f, y: retrieval_metrics(f, y, device="tpu"), ValueError, "device"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, error, message):
    features = unit_vectors(10, 4, seed=22)
    labels = np.arange(10) % 3
    with pytest.raises(error, match=message):
        call(features, labels)


def test_requesting_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="CUDA is not available"):
        retrieval_metrics(unit_vectors(10, 4, seed=23), np.arange(10) % 2, device="cuda")


@pytest.mark.gpu
def test_gpu_results_equal_cpu_results_on_exact_data():
    features = integer_embeddings(500, 3, -3, 3, seed=24)
    labels = labels_with_singletons(500, 15, singletons=4, seed=25)
    cpu = retrieval_metrics(features, labels, normalize=False, return_pr_curve=True)
    gpu = retrieval_metrics(torch.from_numpy(features).cuda(), labels, normalize=False, return_pr_curve=True)
    for key in cpu:
        np.testing.assert_allclose(gpu[key], cpu[key], rtol=0, atol=1e-12, err_msg=key)


def test_miss_probability_matches_exact_binomial_ratios():
    # R@K's chance that a straddling tie group puts no hit inside the cut, C(g-h, m) / C(g, m),
    # on both of its paths: the exact product (min(m, h) <= 1024 terms) and log-gamma beyond.
    from fractions import Fraction
    from math import comb

    from components.evaluation.retrieval import _miss_probability

    exact = [(1, 1, 0), (1, 1, 1), (5, 2, 3), (5, 2, 4), (399, 39, 1), (399, 39, 32), (400, 1, 399),
             (4000, 7, 1024), (4000, 7, 3993), (4000, 7, 3994), (60000, 600, 5000), (9000, 1500, 1024)]
    log_gamma = [(60000, 2000, 5000), (200000, 3000, 1025)]
    for cases, rtol in ((exact, 1e-13), (log_gamma, 1e-8)):
        group, hits, inside = (np.array(column, dtype=np.int64) for column in zip(*cases))
        expected = [float(Fraction(comb(g - h, m), comb(g, m))) for g, h, m in cases]
        np.testing.assert_allclose(_miss_probability(group, hits, inside), expected, rtol=rtol, atol=1e-300)
