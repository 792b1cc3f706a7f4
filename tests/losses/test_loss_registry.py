"""Registry, config files, parameters, input checks and the CE → WARP transfer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from components.losses import (
    SHAPE_PARAMS,
    available_losses,
    build_loss,
    loss_class,
    loss_params,
    transfer_classifier,
)
from components.losses.base import CONTINUOUS_LABELS

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "loss"
NAMES = [
    "cross_entropy", "cosine_softmax", "triplet", "contrastive", "npair", "lifted", "multi_similarity",
    "proxy_nca", "proxy_anchor", "soft_triple", "warp", "smooth_ap", "hierarchical_proxy", "log_ratio",
]
CLASSIFIER_LOSSES = ["cross_entropy", "cosine_softmax", "warp"]


def build(name, num_classes=4, embedding_dim=6, **params):
    shape = dict(num_classes=num_classes, embedding_dim=embedding_dim) if loss_class(name).has_parameters else {}
    return build_loss(name, **shape, **params)


def labels_for(name, class_labels):
    if loss_class(name).label_kind == CONTINUOUS_LABELS:
        return torch.linspace(0, 1, len(class_labels))
    return class_labels


def test_available_losses():
    assert available_losses() == NAMES


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="'arcface'") as error:
        build_loss("arcface")
    assert all(name in str(error.value) for name in NAMES)


def test_unknown_parameter_is_named_with_the_accepted_ones():
    with pytest.raises(TypeError, match="'margine'") as error:
        build_loss("triplet", margine=0.3)
    assert "margin" in str(error.value) and "mining" in str(error.value)


def test_missing_shape_parameter_is_named():
    with pytest.raises(TypeError, match="num_classes"):
        build_loss("proxy_anchor", embedding_dim=8)


@pytest.mark.parametrize(
    "name, params, word",
    [
        ("triplet", dict(mining="hardest"), "mining"),
        ("triplet", dict(margin=-0.1), "margin"),
        ("triplet", dict(soft_margin="yes"), "soft_margin"),
        ("cosine_softmax", dict(scale=0), "scale"),
        ("cross_entropy", dict(label_smoothing=1.5), "label_smoothing"),
        ("warp", dict(max_trials=0), "max_trials"),
        ("warp", dict(num_classes=1), "num_classes"),
        ("smooth_ap", dict(tau=0.0), "tau"),
        ("soft_triple", dict(centers_per_class=0), "centers_per_class"),
        ("proxy_anchor", dict(embedding_dim=-3), "embedding_dim"),
        ("multi_similarity", dict(epsilon=-1.0), "epsilon"),
        ("log_ratio", dict(eps=0), "eps"),
    ],
)
def test_bad_values_are_named(name, params, word):
    with pytest.raises(ValueError, match=word):
        build(name, **params)


@pytest.mark.parametrize("name", NAMES)
def test_config_file_has_the_common_shape_and_every_accepted_parameter(name):
    config = yaml.safe_load((CONF_DIR / f"{name}.yaml").read_text())
    assert set(config) == {"name", "params"} and config["name"] == name
    accepted = {k: v for k, v in loss_params(name).items() if k not in SHAPE_PARAMS}
    assert set(config["params"]) == set(accepted)
    for key, default in accepted.items():  # the file holds the defaults the code uses
        expected = list(default) if isinstance(default, tuple) else default
        assert config["params"][key] == expected, key
    build(name, **config["params"])


@pytest.mark.parametrize("name", NAMES)
def test_has_parameters_and_parameters_get_gradients(name):
    loss = build(name)
    parameters = list(loss.parameters())
    assert loss.has_parameters == bool(parameters)
    embeddings = torch.randn(8, 6, requires_grad=True)
    value = loss(embeddings, labels_for(name, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])))
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    for parameter in parameters:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("labels", [[1, 1, 1, 1], [0, 1, 2, 3], [2]], ids=["one-class", "all-distinct", "single"])
def test_degenerate_batches_give_a_finite_loss_that_backpropagates(name, labels):
    loss = build(name)
    embeddings = torch.randn(len(labels), 6, requires_grad=True)
    value = loss(embeddings, labels_for(name, torch.tensor(labels)))
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert embeddings.grad is not None and torch.isfinite(embeddings.grad).all()


@pytest.mark.parametrize("name", CLASSIFIER_LOSSES)
def test_classifier_losses_give_logits(name):
    loss = build(name, num_classes=5)
    assert loss.logits(torch.randn(3, 6)).shape == (3, 5)


def test_softmax_state_transfers_to_warp():
    embeddings = torch.randn(5, 6)
    ce = build("cross_entropy", num_classes=5)
    warp = build("warp", num_classes=5)
    warp.load_state_dict(ce.state_dict())  # same keys: plain load works
    assert torch.equal(warp.logits(embeddings), ce.logits(embeddings))

    cosine = build("cosine_softmax", num_classes=5, scale=20.0, learn_scale=True)
    warp_cosine = build("warp", num_classes=5, cosine=True)
    assert set(cosine.state_dict()) == set(warp_cosine.state_dict())
    transfer_classifier(cosine, warp_cosine)
    assert torch.equal(warp_cosine.logits(embeddings), cosine.logits(embeddings))
    assert warp_cosine.classifier.scale.item() == 20.0


@pytest.mark.parametrize(
    "source, target, word",
    [
        (("cross_entropy", {}), ("warp", {"cosine": True}), "kind"),
        (("cosine_softmax", {}), ("warp", {}), "kind"),
        (("cross_entropy", {"num_classes": 7}), ("warp", {}), "num_classes 7 vs 4"),
        (("cross_entropy", {"embedding_dim": 3}), ("warp", {}), "embedding_dim 3 vs 6"),
        (("proxy_anchor", {}), ("warp", {}), "no classifier"),
    ],
)
def test_transfer_mismatch_is_explained(source, target, word):
    with pytest.raises(ValueError, match=word):
        transfer_classifier(build(source[0], **source[1]), build(target[0], **target[1]))


@pytest.mark.parametrize(
    "name, embeddings, labels, error, word",
    [
        ("triplet", torch.randn(4), torch.tensor([0, 0, 1, 1]), ValueError, "embeddings"),
        ("triplet", torch.randn(4, 6), torch.tensor([0.0, 0.0, 1.0, 1.0]), TypeError, "labels"),
        ("triplet", torch.randn(4, 6), torch.tensor([0, 0, 1]), ValueError, "labels"),
        ("contrastive", torch.randn(2, 6), torch.tensor([0, -1]), ValueError, ">= 0"),
        ("proxy_anchor", torch.randn(2, 6), torch.tensor([0, 4]), ValueError, "num_classes=4"),
        ("proxy_anchor", torch.randn(2, 5), torch.tensor([0, 1]), ValueError, "embedding_dim=6"),
        ("log_ratio", torch.randn(3, 6), torch.tensor([0, 1, 2]), TypeError, "floating point"),
        ("smooth_ap", torch.randint(0, 3, (3, 6)), torch.tensor([0, 1, 2]), TypeError, "floating point"),
    ],
)
def test_bad_inputs_are_rejected_with_a_message(name, embeddings, labels, error, word):
    with pytest.raises(error, match=word):
        build(name)(embeddings, labels)
