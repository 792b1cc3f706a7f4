"""Embedding head against direct numpy references."""

import numpy as np
import pytest
import torch

from components.models import EmbeddingHead


@pytest.mark.parametrize("scale", (1.0, 4.0))
@pytest.mark.parametrize("batchnorm", (True, False))
def test_embedding_norm_is_scale(scale, batchnorm):
    head = EmbeddingHead(32, dim=8, batchnorm=batchnorm, scale=scale)
    features = torch.randn(6, 32)
    embedding = head(features)
    assert embedding.shape == (6, 8)
    torch.testing.assert_close(embedding.norm(dim=1), torch.full((6,), scale))
    raw = head.project(features)
    torch.testing.assert_close(embedding, raw / raw.norm(dim=1, keepdim=True) * scale)


def test_batchnorm_flag_controls_layers():
    with_bn = EmbeddingHead(4, dim=3, batchnorm=True)
    without = EmbeddingHead(4, dim=3, batchnorm=False)
    assert isinstance(with_bn.batchnorm, torch.nn.BatchNorm1d) and with_bn.linear.bias is None
    assert without.batchnorm is None and without.linear.bias is not None


def test_unnormalised_head_returns_projection():
    head = EmbeddingHead(4, dim=3, batchnorm=False, normalize=False)
    features = torch.randn(2, 4)
    expected = features.numpy() @ head.linear.weight.detach().numpy().T + head.linear.bias.detach().numpy()
    np.testing.assert_allclose(head(features).detach().numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"in_features": 0}, "in_features"),
        ({"dim": -1}, "dim"),
        ({"scale": 0.0}, "scale"),
        ({"normalize": False, "scale": 2.0}, "normalize"),
    ],
)
def test_head_argument_errors(kwargs, match):
    arguments = {"in_features": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        EmbeddingHead(**arguments)


def test_head_rejects_wrong_feature_width():
    with pytest.raises(ValueError, match=r"\[B, 4\].*\(2, 5\)"):
        EmbeddingHead(4)(torch.randn(2, 5))
