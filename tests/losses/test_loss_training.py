"""Every loss goes down when a linear model learns a small separable problem."""

from __future__ import annotations

import pytest
import torch

from components.losses import available_losses, build_loss, loss_class, loss_params
from components.losses.base import CONTINUOUS_LABELS

NUM_CLASSES, PER_CLASS, INPUT_DIM, EMBEDDING_DIM = 4, 6, 12, 8
STEPS = 40


def gaussian_blobs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(NUM_CLASSES, INPUT_DIM, generator=generator)
    labels = torch.arange(NUM_CLASSES).repeat(PER_CLASS)           # interleaved, not sorted
    inputs = centres[labels] + torch.randn(len(labels), INPUT_DIM, generator=generator)
    return inputs, labels


def continuous_problem(seed=0):
    """Continuous 2-d attributes, observed (mixed and padded with noise) in the inputs."""
    generator = torch.Generator().manual_seed(seed)
    attributes = torch.rand(NUM_CLASSES * PER_CLASS, 2, generator=generator)
    mixing = torch.randn(2, INPUT_DIM, generator=generator)
    inputs = attributes @ mixing + 0.01 * torch.randn(len(attributes), INPUT_DIM, generator=generator)
    return inputs, attributes


def train(name, **params):
    torch.manual_seed(0)
    if loss_class(name).has_parameters:
        params.update(num_classes=NUM_CLASSES, embedding_dim=EMBEDDING_DIM)
    loss = build_loss(name, **params)
    continuous = loss_class(name).label_kind == CONTINUOUS_LABELS
    inputs, labels = continuous_problem() if continuous else gaussian_blobs()
    model = torch.nn.Linear(INPUT_DIM, EMBEDDING_DIM)
    optimiser = torch.optim.Adam([*model.parameters(), *loss.parameters()], lr=0.02)
    history = []
    for _ in range(STEPS):
        value = loss(model(inputs), labels)
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
        history.append(value.item())
    return history


@pytest.mark.parametrize("name", available_losses())
def test_loss_decreases(name):
    params = {"seed": 0} if "seed" in loss_params(name) else {}  # WARP's draws, k-means
    history = train(name, **params)
    start, end = sum(history[:3]) / 3, sum(history[-3:]) / 3  # WARP's draws are random: average
    assert end < 0.9 * start, (name, history[:3], history[-3:])


@pytest.mark.parametrize("mining", ["batch_all", "batch_hard"])
def test_triplet_mining_variants_decrease(mining):
    history = train("triplet", mining=mining, soft_margin=True)
    assert history[-1] < 0.9 * history[0]


@pytest.mark.parametrize("name, miner", [("contrastive", "batch_hard"), ("multi_similarity", "semi_hard"),
                                         ("lifted", "multi_similarity"), ("triplet", "multi_similarity")])
def test_losses_with_another_miner_decrease(name, miner):
    history = train(name, miner=miner)
    start, end = sum(history[:3]) / 3, sum(history[-3:]) / 3
    assert end < 0.9 * start, (name, miner, history[:3], history[-3:])
