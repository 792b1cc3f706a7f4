"""Smooth-AP: any label order, unequal class sizes, and the exact AP in the limit τ → 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from components.losses import build_loss
from tests.losses import loss_references as ref


def batch(counts, seed, dim=5):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=generator)]
    return torch.randn(len(labels), dim, generator=generator, dtype=torch.float64), labels


def true_map(embeddings, labels):
    """Leave-one-out mAP by cosine similarity, with sklearn's average precision."""
    x = torch.nn.functional.normalize(embeddings, dim=1).numpy()
    y = labels.numpy()
    similarity = x @ x.T
    aps = []
    for q in range(len(y)):
        others = np.arange(len(y)) != q
        relevant = y[others] == y[q]
        if relevant.any():
            aps.append(average_precision_score(relevant, similarity[q, others]))
    return float(np.mean(aps))


@pytest.mark.parametrize("counts", [[4, 4], [2, 2, 2, 2, 2, 2], [3, 3, 3, 3], [5, 2, 2], [1, 4, 2, 6, 3]])
def test_equals_reference_for_pk_and_ragged_batches_in_any_order(counts):
    embeddings, labels = batch(counts, seed=len(counts))
    loss = build_loss("smooth_ap")
    assert loss(embeddings, labels).item() == pytest.approx(ref.smooth_ap(embeddings, labels, 0.01), rel=1e-5)


def test_invariant_to_batch_order():
    embeddings, labels = batch([3, 5, 2, 4], seed=1)
    loss = build_loss("smooth_ap")
    permutation = torch.randperm(len(labels), generator=torch.Generator().manual_seed(9))
    assert loss(embeddings, labels).item() == pytest.approx(loss(embeddings[permutation], labels[permutation]).item(), rel=1e-12)


@pytest.mark.parametrize("counts", [[3, 3, 3, 3], [1, 4, 2, 6, 3]])
def test_approaches_true_ap_as_tau_goes_to_zero(counts):
    embeddings, labels = batch(counts, seed=3)
    exact = 1.0 - true_map(embeddings, labels)
    errors = [abs(build_loss("smooth_ap", tau=tau)(embeddings, labels).item() - exact) for tau in (0.1, 0.01, 1e-6)]
    assert errors[0] > errors[2]
    assert errors[2] < 1e-9


def test_zero_for_perfect_retrieval_and_graph_kept_without_positives():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    embeddings = torch.nn.functional.one_hot(labels, 3).double() + 0.01 * torch.randn(6, 3, dtype=torch.float64)
    assert build_loss("smooth_ap", tau=1e-4)(embeddings, labels).item() == pytest.approx(0.0, abs=1e-9)
    lonely = torch.randn(3, 4, requires_grad=True)
    value = build_loss("smooth_ap")(lonely, torch.tensor([0, 1, 2]))
    value.backward()
    assert value.item() == 0.0 and lonely.grad is not None
