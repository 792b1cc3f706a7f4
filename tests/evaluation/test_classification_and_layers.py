"""Classification accuracy and per-layer evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.constants import METRIC_MAP
from components.evaluation import classification_accuracy, evaluate_layers, retrieval_metrics


def test_accuracy_counts_argmax_hits_and_takes_numpy_or_torch():
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 0.0]])
    labels = np.array([1, 0, 1, 1])  # last row ties: the first maximal class (0) is predicted
    assert classification_accuracy(logits, labels) == pytest.approx(0.5)
    assert classification_accuracy(torch.from_numpy(logits), torch.from_numpy(labels)) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "logits, labels, error, message",
    [
        (np.zeros(3), np.zeros(3, int), ValueError, "logits must be 2-d"),
        (np.zeros((3, 2)), np.zeros(2, int), ValueError, "one entry per row"),
        (np.zeros((3, 2)), np.zeros(3), TypeError, "integer class indices"),
        (np.zeros((3, 2)), np.array([0, 1, 2]), ValueError, r"labels must lie in \[0, 2\)"),
        (np.zeros((0, 2)), np.zeros(0, int), ValueError, "empty"),
    ],
)
def test_accuracy_rejects_bad_input(logits, labels, error, message):
    with pytest.raises(error, match=message):
        classification_accuracy(logits, labels)


def test_layers_are_evaluated_side_by_side_with_the_same_protocol():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 150)
    features = {"penultimate": rng.standard_normal((150, 32)), "embedding": rng.standard_normal((150, 8))}
    query_mask = np.arange(150) < 50
    results = evaluate_layers(features, labels, ks=(1, 5), query_mask=query_mask)
    assert list(results) == ["penultimate", "embedding"]
    for name, values in features.items():
        assert results[name] == retrieval_metrics(values, labels, (1, 5), query_mask=query_mask)
        assert "R@5" in results[name] and METRIC_MAP in results[name]


def test_layer_errors_name_the_tap():
    labels = np.arange(10) % 2
    with pytest.raises(ValueError, match="feature tap 'bad'"):
        evaluate_layers({"good": np.ones((10, 4)), "bad": np.ones((9, 4))}, labels)
    with pytest.raises(ValueError, match="features is empty"):
        evaluate_layers({}, labels)
