"""Mixed precision: the network under bf16 autocast, the loss in float32 outside it.

CPU bf16 autocast stands in for the GPU's. Bounds: bfloat16 keeps 8 significant bits
(relative rounding 2^-8 ≈ 4e-3 per op), so the network's outputs, and with them the loss,
move by ~1e-2 relative; the loss itself, given those outputs, must add no error at all.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from components.losses import build_loss
from components.models import build_model
from components.training.module import TrainModule

CLASSES, PER_CLASS, DIM, SIZE = 8, 4, 32, 32


class Recording(nn.Module):
    """Wraps a loss and records what it was called with, and under which autocast state."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.inner = loss

    def forward(self, embeddings, labels):
        self.autocast = torch.is_autocast_enabled("cpu")
        embeddings.retain_grad()
        self.embeddings = embeddings
        return self.inner(embeddings, labels)


def setup(name: str):
    torch.manual_seed(0)
    model = build_model("small_cnn", embedding_dim=DIM, image_size=SIZE)
    params = {"num_classes": CLASSES, "embedding_dim": DIM} if name in ("proxy_anchor", "cross_entropy") else {}
    loss = build_loss(name, **params)
    images = torch.rand(CLASSES * PER_CLASS, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    return model, loss, images, labels


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


@pytest.mark.parametrize("name", ["proxy_anchor", "cross_entropy", "triplet"])
def test_the_loss_runs_in_float32_outside_autocast(name):
    model, loss, images, labels = setup(name)
    recording = Recording(loss)
    value = TrainModule(model, recording, autocast_dtype=torch.bfloat16)(images, labels)
    value.backward()
    assert recording.autocast is False and recording.embeddings.dtype == torch.float32
    # Reference: the float32 loss of exactly those embeddings, computed on its own.
    embeddings = recording.embeddings.detach().clone().requires_grad_(True)
    reference = build_loss(name, **({"num_classes": CLASSES, "embedding_dim": DIM} if name != "triplet" else {}))
    reference.load_state_dict(loss.state_dict())
    expected = reference(embeddings, labels)
    expected.backward()
    assert abs(value.item() - expected.item()) <= 1e-6 * abs(expected.item())
    assert relative(recording.embeddings.grad, embeddings.grad) < 1e-5
    for mine, theirs in zip(loss.parameters(), reference.parameters()):
        assert relative(mine.grad, theirs.grad) < 1e-5


def test_inside_autocast_the_proxy_gradient_would_be_off():
    """Sensitivity check for the test above: the same loss inside the autocast region (what a
    `.float()` within autocast amounts to) moves Proxy-Anchor's gradients by > 1e-3."""
    model, loss, images, labels = setup("proxy_anchor")
    embeddings = model(images).detach()
    grads = {}
    for inside in (False, True):
        loss.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=inside):
            loss(embeddings.float(), labels).backward()
        grads[inside] = loss.proxies.grad.clone()
    assert relative(grads[True], grads[False]) > 1e-3


@pytest.mark.parametrize("name", ["proxy_anchor", "cross_entropy", "triplet"])
def test_amp_and_float32_agree_within_bfloat16_precision(name):
    model, loss, images, labels = setup(name)
    results = {}
    for amp in (False, True):
        module = TrainModule(model, loss, autocast_dtype=torch.bfloat16 if amp else None)
        module.zero_grad()
        value = module(images, labels)
        value.backward()
        results[amp] = (value.item(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None})
    (loss32, grads32), (loss16, grads16) = results[False], results[True]
    # Measured: 4e-3 (Proxy-Anchor), 4e-5 (CE), 1.2e-2 (triplet, whose mining sees rounded distances).
    assert abs(loss16 - loss32) <= 2e-2 * abs(loss32)
    assert grads16.keys() == grads32.keys()
    for key in (k for k in grads32 if k.startswith("loss.")):  # proxies / classifier: measured <= 5.3e-2
        assert relative(grads16[key], grads32[key]) < 0.1, key
    network32 = torch.cat([g.flatten() for k, g in grads32.items() if k.startswith("model.")])
    network16 = torch.cat([g.flatten() for k, g in grads16.items() if k.startswith("model.")])
    # Same descent direction (measured cosine 0.97 / 0.98 / 0.87).
    assert torch.nn.functional.cosine_similarity(network16, network32, dim=0) > 0.8
