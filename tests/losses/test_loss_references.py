"""Every loss equals a slow loop reference written from its paper (float64, ~1e-5)."""

from __future__ import annotations

import pytest
import torch

from components.losses import build_loss
from tests.losses import loss_references as ref

# Batch shapes: P×K balanced, K = 2 (N-pair's own shape), ragged class sizes including a
# singleton class (a sample with no positive), all with shuffled label order.
CLASS_COUNTS = {
    "4x3": [3, 3, 3, 3],
    "3x4": [4, 4, 4],
    "5x2": [2, 2, 2, 2, 2],
    "ragged": [1, 2, 3, 5],
}
TOL = dict(rel=1e-5, abs=1e-7)


def make_batch(counts, dim=6, seed=0, num_classes=None):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=generator)]
    embeddings = torch.randn(len(labels), dim, generator=generator, dtype=torch.float64)
    return embeddings, labels


def value(loss, embeddings, labels):
    out = loss(embeddings, labels)
    assert out.ndim == 0 and out.dtype == torch.float64
    return out.item()


shapes = pytest.mark.parametrize("shape", list(CLASS_COUNTS))


@shapes
@pytest.mark.parametrize(
    "params",
    [
        dict(mining="batch_all"),
        dict(mining="batch_hard"),
        dict(mining="semi_hard"),
        dict(mining="batch_all", soft_margin=True),
        dict(mining="batch_hard", soft_margin=True, squared=False),
        dict(mining="semi_hard", margin=0.5, squared=False),
    ],
    ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()),
)
def test_triplet(shape, params):
    embeddings, labels = make_batch(CLASS_COUNTS[shape])
    loss = build_loss("triplet", **params)
    assert value(loss, embeddings, labels) == pytest.approx(ref.triplet(embeddings, labels, **params), **TOL)


@shapes
@pytest.mark.parametrize("params", [{}, dict(pos_margin=0.3, neg_margin=1.2)])
def test_contrastive(shape, params):
    embeddings, labels = make_batch(CLASS_COUNTS[shape])
    loss = build_loss("contrastive", **params)
    assert value(loss, embeddings, labels) == pytest.approx(ref.contrastive(embeddings, labels, **params), **TOL)


@shapes
@pytest.mark.parametrize("params", [{}, dict(margin=0.5)])
def test_lifted(shape, params):
    embeddings, labels = make_batch(CLASS_COUNTS[shape])
    loss = build_loss("lifted", **params)
    assert value(loss, embeddings, labels) == pytest.approx(ref.lifted(embeddings, labels, **params), **TOL)


@shapes
@pytest.mark.parametrize("params", [{}, dict(epsilon=None), dict(alpha=3.0, beta=20.0, base=0.3, epsilon=0.3)])
def test_multi_similarity(shape, params):
    embeddings, labels = make_batch(CLASS_COUNTS[shape])
    loss = build_loss("multi_similarity", **params)
    expected = ref.multi_similarity(embeddings, labels, **params)
    assert value(loss, embeddings, labels) == pytest.approx(expected, **TOL)


def test_multi_similarity_mining_changes_the_loss():
    # Guards the reference comparison above: with ε = 0.1 the mining must drop pairs here.
    embeddings, labels = make_batch(CLASS_COUNTS["4x3"])
    mined = ref.multi_similarity(embeddings, labels)
    unmined = ref.multi_similarity(embeddings, labels, epsilon=None)
    assert mined != pytest.approx(unmined, rel=1e-3)


@shapes
@pytest.mark.parametrize("params", [{}, dict(l2_reg=0.5)])
def test_npair(shape, params):
    embeddings, labels = make_batch(CLASS_COUNTS[shape])
    loss = build_loss("npair", **params)
    assert value(loss, embeddings, labels) == pytest.approx(ref.npair(embeddings, labels, **params), **TOL)


@shapes
@pytest.mark.parametrize("params", [{}, dict(scale=3.0)])
def test_proxy_nca(shape, params):
    embeddings, labels = make_batch(CLASS_COUNTS[shape])
    num_classes = int(labels.max()) + 2  # one class without samples in the batch
    loss = build_loss("proxy_nca", num_classes=num_classes, embedding_dim=6, **params).double()
    expected = ref.proxy_nca(embeddings, labels, loss.proxies, **params)
    assert value(loss, embeddings, labels) == pytest.approx(expected, **TOL)


@shapes
@pytest.mark.parametrize("params", [{}, dict(alpha=8.0, margin=0.3)])
def test_proxy_anchor(shape, params):
    embeddings, labels = make_batch(CLASS_COUNTS[shape])
    num_classes = int(labels.max()) + 2  # a proxy without positives: only in the negative term
    loss = build_loss("proxy_anchor", num_classes=num_classes, embedding_dim=6, **params).double()
    expected = ref.proxy_anchor(embeddings, labels, loss.proxies, **params)
    assert value(loss, embeddings, labels) == pytest.approx(expected, **TOL)


@shapes
@pytest.mark.parametrize("params", [{}, dict(centers_per_class=3, la=10.0, gamma=0.5, margin=0.1, tau=0.0)])
def test_soft_triple(shape, params):
    embeddings, labels = make_batch(CLASS_COUNTS[shape])
    num_classes = int(labels.max()) + 1
    loss = build_loss("soft_triple", num_classes=num_classes, embedding_dim=6, **params).double()
    defaults = dict(centers_per_class=10)
    expected = ref.soft_triple(embeddings, labels, loss.centers, num_classes, **{**defaults, **params})
    assert value(loss, embeddings, labels) == pytest.approx(expected, **TOL)


@shapes
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy(shape, label_smoothing):
    embeddings, labels = make_batch(CLASS_COUNTS[shape])
    loss = build_loss("cross_entropy", num_classes=5, embedding_dim=6, label_smoothing=label_smoothing).double()
    logits = ref.linear_logits(embeddings, loss.classifier.weight, loss.classifier.bias)
    assert torch.allclose(loss.logits(embeddings), torch.as_tensor(logits), atol=1e-10)
    expected = ref.softmax_cross_entropy(logits, labels, label_smoothing)
    assert value(loss, embeddings, labels) == pytest.approx(expected, **TOL)


@shapes
@pytest.mark.parametrize("params", [{}, dict(scale=30.0, label_smoothing=0.1)])
def test_cosine_softmax(shape, params):
    embeddings, labels = make_batch(CLASS_COUNTS[shape])
    loss = build_loss("cosine_softmax", num_classes=5, embedding_dim=6, **params).double()
    logits = ref.cosine_logits(embeddings, loss.classifier.weight, params.get("scale", 16.0))
    assert torch.allclose(loss.logits(embeddings), torch.as_tensor(logits), atol=1e-10)
    expected = ref.softmax_cross_entropy(logits, labels, params.get("label_smoothing", 0.0))
    assert value(loss, embeddings, labels) == pytest.approx(expected, **TOL)


@shapes
@pytest.mark.parametrize("tau", [0.01, 0.1])
def test_smooth_ap(shape, tau):
    embeddings, labels = make_batch(CLASS_COUNTS[shape])
    loss = build_loss("smooth_ap", tau=tau)
    assert value(loss, embeddings, labels) == pytest.approx(ref.smooth_ap(embeddings, labels, tau), **TOL)


@pytest.mark.parametrize("batch_size", [3, 7])
@pytest.mark.parametrize("num_attributes", [None, 2])
@pytest.mark.parametrize("eps", [1e-6, 0.1])
def test_log_ratio(batch_size, num_attributes, eps):
    generator = torch.Generator().manual_seed(batch_size)
    embeddings = torch.randn(batch_size, 5, generator=generator, dtype=torch.float64)
    shape = (batch_size,) if num_attributes is None else (batch_size, num_attributes)
    labels = torch.rand(shape, generator=generator, dtype=torch.float64) * 4
    labels[1] = labels[0]  # equal labels: Dy = 0 must stay finite through eps
    loss = build_loss("log_ratio", eps=eps)
    assert value(loss, embeddings, labels) == pytest.approx(ref.log_ratio(embeddings, labels, eps), **TOL)
