"""On a CUDA device every loss gives the CPU value, and WARP's draws stay on the device."""

from __future__ import annotations

import pytest
import torch

from components.losses import CONTINUOUS_LABELS, available_losses, build_loss, loss_class
from components.losses.reference import warp_loss_loop
from components.losses.warp import draw_negative_classes, warp_loss_from_draws

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("name", available_losses())
def test_cuda_value_equals_cpu_value(name):
    torch.manual_seed(0)
    params = dict(num_classes=6, embedding_dim=8) if loss_class(name).has_parameters else {}
    cpu_loss = build_loss(name, **params).double()
    cuda_loss = build_loss(name, **params).double()
    cuda_loss.load_state_dict(cpu_loss.state_dict())
    cuda_loss = cuda_loss.cuda()
    embeddings = torch.randn(18, 8, dtype=torch.float64)
    labels = torch.arange(6).repeat(3)
    if name == "log_ratio":
        labels = torch.rand(18, 2, dtype=torch.float64)
    if name == "warp":  # same draws on both devices
        draws = draw_negative_classes(labels, 6, 5, torch.Generator().manual_seed(0))
        expected = warp_loss_from_draws(cpu_loss.logits(embeddings), labels, draws).item()
        value = warp_loss_from_draws(cuda_loss.logits(embeddings.cuda()), labels.cuda(), draws.cuda()).item()
    else:
        expected = cpu_loss(embeddings, labels).item()
        value = cuda_loss(embeddings.cuda(), labels.cuda()).item()
    assert value == pytest.approx(expected, rel=1e-6, abs=1e-9)
    cuda_loss(embeddings.cuda().requires_grad_(True), labels.cuda()).backward()


def test_warp_module_draws_on_the_device_and_equals_the_loop():
    loss = build_loss("warp", num_classes=50, embedding_dim=16, seed=3).cuda()
    embeddings = torch.randn(64, 16, device="cuda")
    labels = torch.randint(0, 50, (64,), device="cuda")
    value = loss(embeddings, labels)
    assert loss.generator.device.type == "cuda"
    draws = draw_negative_classes(labels, 50, 49, torch.Generator(device="cuda").manual_seed(3))
    expected = warp_loss_loop(loss.logits(embeddings), labels, draws)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("miner", ["batch_all", "batch_hard", "semi_hard", "multi_similarity"])
@pytest.mark.parametrize("name", ["triplet", "contrastive", "lifted", "multi_similarity"])
def test_cuda_mined_loss_and_diagnostics_equal_cpu(name, miner):
    torch.manual_seed(0)
    embeddings = torch.randn(24, 8, dtype=torch.float64)
    labels = torch.arange(6).repeat(4)
    cpu_loss, cuda_loss = build_loss(name, miner=miner), build_loss(name, miner=miner).cuda()
    expected = cpu_loss(embeddings, labels).item()
    value = cuda_loss(embeddings.cuda(), labels.cuda()).item()
    assert value == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert cuda_loss.diagnostics() == pytest.approx(cpu_loss.diagnostics(), rel=1e-6)


@pytest.mark.parametrize("name", available_losses())
def test_cuda_diagnostics_are_floats(name):
    params = dict(num_classes=6, embedding_dim=8) if loss_class(name).has_parameters else {}
    loss = build_loss(name, **params).cuda()
    labels = torch.arange(6).repeat(3).cuda()
    if loss.label_kind == CONTINUOUS_LABELS:
        labels = torch.rand(18, 2, device="cuda")
    loss(torch.randn(18, 8, device="cuda"), labels)
    assert all(type(v) is float for v in loss.diagnostics(detailed=True).values())
