"""Log-ratio loss (Kim et al., CVPR 2019): squared Euclidean distances on both sides."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from components.losses import build_loss


def random_unit_labels(batch_size: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randn(batch_size, dim, generator=generator, dtype=torch.float64)
    return labels / labels.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_embedding_equal_to_the_labels_has_zero_loss(seed):
    # The paper's D and Dy are both squared distances, so ratios agree exactly. With Dy not
    # squared (the old bug) this case gave 0.48-0.50.
    labels = random_unit_labels(32, 3, seed)
    loss = build_loss("log_ratio")
    assert loss(labels.clone(), labels).item() == pytest.approx(0.0, abs=1e-9)


def test_scaled_rotated_and_shifted_copies_of_the_labels_have_zero_loss():
    labels = random_unit_labels(20, 3, seed=3)
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    embedding = 5.0 * labels @ rotation + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    loss = build_loss("log_ratio", eps=1e-12)  # eps would otherwise weigh differently on the two scales
    assert loss(embedding, labels).item() == pytest.approx(0.0, abs=1e-9)


def test_a_single_triplet_matches_the_papers_formula_by_hand():
    # Anchor 0, others 1 and 2; labels on a line at 0, 1, 3 and embeddings at 0, 2, 3:
    # label ratios 1/9 (squared), embedding ratios 4/9.
    embeddings = torch.tensor([[0.0], [2.0], [3.0]], dtype=torch.float64)
    labels = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    eps = 1e-12

    def squared(u, v):
        return (u - v) ** 2

    total = 0.0
    for a, i, j in itertools.permutations(range(3)):
        embedding_term = math.log(squared(embeddings[a, 0], embeddings[i, 0]) + eps) - math.log(
            squared(embeddings[a, 0], embeddings[j, 0]) + eps)
        label_term = math.log(squared(labels[a], labels[i]) + eps) - math.log(squared(labels[a], labels[j]) + eps)
        total += float(embedding_term - label_term) ** 2
    loss = build_loss("log_ratio", eps=eps)
    assert loss(embeddings, labels).item() == pytest.approx(total / 6, rel=1e-9)
    # Anchor 0 alone: (log 4/9 - log 1/9)^2 = (log 4)^2, counted for (i, j) and (j, i).
    assert total >= 2 * math.log(4.0) ** 2 - 1e-9


def test_gradient_descent_on_free_embeddings_recovers_the_label_geometry():
    labels = random_unit_labels(24, 3, seed=5)
    embedding = torch.randn(24, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64,
                            requires_grad=True)
    loss = build_loss("log_ratio")
    optimiser = torch.optim.Adam([embedding], lr=0.05)
    start = loss(embedding, labels).item()
    for _ in range(300):
        optimiser.zero_grad()
        value = loss(embedding, labels)
        value.backward()
        optimiser.step()
    assert value.item() < 0.05 * start
