"""Classification accuracy against hand-counted argmax hits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.evaluation import classification_accuracy


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
