"""Proxy losses against pml where pml is right, and where it is not."""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from components.losses import build_loss
from components.losses.proxy import proxy_nca_loss
from tests.losses import loss_references as ref


def batch(seed=0, n=10, dim=6, num_classes=4):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=generator)
    return torch.randn(n, dim, generator=generator, dtype=torch.float64), labels


def test_proxy_anchor_equals_pml():
    embeddings, labels = batch()
    ours = build_loss("proxy_anchor", num_classes=5, embedding_dim=6).double()
    theirs = pml_losses.ProxyAnchorLoss(num_classes=5, embedding_size=6, margin=0.1, alpha=32)
    with torch.no_grad():
        theirs.proxies.data = ours.proxies.detach().clone()
    assert ours(embeddings, labels).item() == pytest.approx(theirs(embeddings, labels).item(), rel=1e-10)


def test_proxy_nca_equals_pml_where_nothing_underflows():
    embeddings, labels = batch(seed=1)
    ours = build_loss("proxy_nca", num_classes=5, embedding_dim=6, scale=9.0).double()
    theirs = pml_losses.ProxyNCALoss(num_classes=5, embedding_size=6, softmax_scale=9.0)
    with torch.no_grad():
        theirs.proxies.data = ours.proxies.detach().clone()
    assert ours(embeddings, labels).item() == pytest.approx(theirs(embeddings, labels).item(), rel=1e-10)


def test_proxy_nca_keeps_the_worst_sample_in_float32():
    # A sample sitting on another class's proxy, opposite its own, at scale 32: its softmax
    # probability underflows in float32. pml drops such samples; the loss here must not.
    proxies = torch.nn.functional.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    proxies[0] = -proxies[1]
    embeddings = torch.stack([proxies[1], proxies[1], proxies[2]])
    labels = torch.tensor([0, 1, 2])
    value = proxy_nca_loss(embeddings, labels, proxies, scale=32.0).item()
    expected = ref.proxy_nca(embeddings, labels, proxies, scale=32.0)
    assert value == pytest.approx(expected, rel=1e-5)
    assert value > 128 / 3  # the first sample alone contributes 32 · 4 / 3


def test_proxies_get_gradients_and_are_parameters():
    embeddings, labels = batch(seed=2)
    for name in ("proxy_anchor", "proxy_nca"):
        loss = build_loss(name, num_classes=4, embedding_dim=6).double()
        assert loss.has_parameters and [n for n, _ in loss.named_parameters()] == ["proxies"]
        loss(embeddings, labels).backward()
        assert loss.proxies.grad.abs().sum() > 0
