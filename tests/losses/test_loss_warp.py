"""WARP: vectorised == per-sample loop on the same draws, L(r), the zero cases, the RNG."""

from __future__ import annotations

import pytest
import torch

from components.losses import build_loss
from components.losses.reference import warp_loss_loop
from components.losses.warp import draw_negative_classes, harmonic_weights, warp_loss_from_draws


def random_scores(batch_size, num_classes, seed, spread=1.0):
    generator = torch.Generator().manual_seed(seed)
    scores = spread * torch.randn(batch_size, num_classes, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
    return scores, labels


def test_harmonic_weights():
    table = harmonic_weights(5)
    expected = [0.0, 1.0, 1.5, 1.5 + 1 / 3, 1.5 + 1 / 3 + 1 / 4, 1.5 + 1 / 3 + 1 / 4 + 1 / 5]
    assert table.tolist() == pytest.approx(expected, abs=1e-15)
    assert harmonic_weights(1000)[1000].item() == pytest.approx(sum(1 / i for i in range(1, 1001)), rel=1e-12)


def test_draws_are_negatives_and_uniform():
    labels = torch.tensor([0, 3, 9] * 2000)
    draws = draw_negative_classes(labels, 10, 9, torch.Generator().manual_seed(0))
    assert draws.shape == (6000, 9)
    assert not (draws == labels.unsqueeze(1)).any()
    assert draws.min() >= 0 and draws.max() <= 9
    counts = torch.bincount(draws[labels == 3].flatten(), minlength=10).double()
    assert counts[3] == 0
    others = counts[torch.arange(10) != 3]
    assert (others / others.sum() - 1 / 9).abs().max() < 0.01


@pytest.mark.parametrize(
    "batch_size, num_classes, spread, max_trials",
    [(16, 5, 1.0, None), (32, 20, 1.0, None), (32, 20, 0.3, None), (8, 50, 2.0, 10), (8, 7, 1.0, 30), (4, 2, 1.0, None)],
)
def test_vectorised_equals_loop_on_same_draws(batch_size, num_classes, spread, max_trials):
    scores, labels = random_scores(batch_size, num_classes, seed=batch_size + num_classes, spread=spread)
    trials = num_classes - 1 if max_trials is None else max_trials
    draws = draw_negative_classes(labels, num_classes, trials, torch.Generator().manual_seed(1))
    fast = warp_loss_from_draws(scores, labels, draws, margin=1.0)
    slow = warp_loss_loop(scores, labels, draws, margin=1.0)
    assert fast.item() == pytest.approx(slow.item(), rel=1e-12, abs=1e-12)
    assert fast.item() > 0


def test_vectorised_gradient_equals_loop_gradient():
    scores, labels = random_scores(12, 9, seed=3)
    draws = draw_negative_classes(labels, 9, 8, torch.Generator().manual_seed(2))
    fast_scores = scores.clone().requires_grad_(True)
    slow_scores = scores.clone().requires_grad_(True)
    warp_loss_from_draws(fast_scores, labels, draws).backward()
    warp_loss_loop(slow_scores, labels, draws).backward()
    assert torch.allclose(fast_scores.grad, slow_scores.grad, atol=1e-12)


def test_hand_computed_sample():
    # C = 7, y = 0, s_y = 2. Draws: class 1 (0.5, no violation), class 2 (0.9, no), class 3
    # (1.5 > 2 - 1: violation at the 3rd draw). r = floor(6/3) = 2, L(2) = 1.5, hinge 1 - 2 + 1.5.
    scores = torch.tensor([[2.0, 0.5, 0.9, 1.5, 3.0, 0.0, 0.0]], dtype=torch.float64)
    draws = torch.tensor([[1, 2, 3, 4, 5, 6]])
    loss = warp_loss_from_draws(scores, torch.tensor([0]), draws)
    assert loss.item() == pytest.approx(1.5 * (1 - 2.0 + 1.5))
    # First draw violates: N = 1, r = 6, L(6) = 2.45.
    loss = warp_loss_from_draws(scores, torch.tensor([0]), torch.tensor([[4, 1, 2, 3, 5, 6]]))
    assert loss.item() == pytest.approx(sum(1 / i for i in range(1, 7)) * (1 - 2.0 + 3.0))


def test_zero_when_every_margin_is_satisfied():
    num_classes = 6
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 2])
    scores = torch.zeros(len(labels), num_classes, dtype=torch.float64)
    scores[torch.arange(len(labels)), labels] = 1.01  # every negative at least 1.01 below
    draws = draw_negative_classes(labels, num_classes, 50, torch.Generator().manual_seed(0))
    assert warp_loss_from_draws(scores, labels, draws).item() == 0.0
    assert warp_loss_loop(scores, labels, draws).item() == 0.0


def test_draws_beyond_c_minus_1_give_rank_zero():
    # More than C-1 draws before a violation estimates rank 0 and L(0) = 0.
    scores = torch.tensor([[2.0, 0.0, 0.0, 1.5]], dtype=torch.float64)
    draws = torch.tensor([[1, 2, 1, 2, 3]])           # violation (class 3) at draw 5 > C-1 = 3
    assert warp_loss_from_draws(scores, torch.tensor([0]), draws).item() == 0.0
    assert warp_loss_loop(scores, torch.tensor([0]), draws).item() == 0.0


def test_module_is_reproducible_with_a_seed_and_matches_the_loop():
    embeddings = torch.randn(10, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 0, 1])
    loss_a = build_loss("warp", num_classes=8, embedding_dim=4, seed=123).double()
    loss_b = build_loss("warp", num_classes=8, embedding_dim=4, seed=123).double()
    loss_b.load_state_dict(loss_a.state_dict())
    assert loss_a(embeddings, labels).item() == loss_b(embeddings, labels).item()
    # The module's draws replayed through the loop reference give the same value.
    loss_c = build_loss("warp", num_classes=8, embedding_dim=4, seed=7).double()
    loss_c.load_state_dict(loss_a.state_dict())
    value = loss_c(embeddings, labels).item()
    draws = draw_negative_classes(labels, 8, 7, torch.Generator().manual_seed(7))
    expected = warp_loss_loop(loss_a.logits(embeddings), labels, draws).item()
    assert value == pytest.approx(expected, rel=1e-12)


def test_cosine_warp_uses_scaled_cosine_scores():
    loss = build_loss("warp", num_classes=5, embedding_dim=3, cosine=True, scale=10.0).double()
    embeddings = torch.randn(4, 3, dtype=torch.float64)
    logits = loss.logits(embeddings)
    assert logits.shape == (4, 5) and logits.abs().max() <= 10.0 + 1e-9

