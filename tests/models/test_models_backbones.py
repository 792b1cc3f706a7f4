"""Backbones build offline and give the documented stage shapes for chip sizes and band counts."""

import socket

import pytest
import torch

from components.models import (
    POOLED,
    STAGE_NAMES,
    available_backbones,
    build_backbone,
    stem_for_image_size,
)

SMALL = ("small_cnn", "resnet18", "resnet34", "resnet50")
LARGE = ("resnet101", "resnet152")
OUT_FEATURES = {
    "small_cnn": 256, "resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048
}
# Spatial side of stage1..stage4 for each stem (stages 2-4 halve it, rounding up).
STAGE_SIDES = {
    ("cifar", 32): (32, 16, 8, 4),
    ("stride2", 101): (51, 26, 13, 7),
    ("imagenet", 101): (26, 13, 7, 4),
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _check_features(backbone, features, batch, sides):
    assert list(features) == [*STAGE_NAMES, POOLED]
    for name, side in zip(STAGE_NAMES, sides):
        assert features[name].shape == (batch, backbone.stage_channels[name], side, side), name
    assert features[POOLED].shape == (batch, backbone.out_features)


def test_registry_names():
    assert set(available_backbones()) == set(OUT_FEATURES)


@pytest.mark.parametrize("name", SMALL)
def test_grayscale_32(name):
    backbone = build_backbone(name, in_channels=1, small_input=True).eval()
    assert backbone.out_features == OUT_FEATURES[name]
    with torch.no_grad():
        features = backbone.forward_features(torch.rand(2, 1, 32, 32))
    _check_features(backbone, features, 2, STAGE_SIDES[("cifar", 32)])


def test_forward_returns_pooled_features():
    backbone = build_backbone("small_cnn").eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), backbone.forward_features(x)[POOLED])


# The stem alone decides the map sizes, so the cheap backbones cover the 101x101 case.
@pytest.mark.parametrize("name", ("small_cnn", "resnet18"))
@pytest.mark.parametrize("stem", ("stride2", "imagenet"))
def test_grayscale_101(name, stem):
    backbone = build_backbone(name, in_channels=1, stem=stem).eval()
    with torch.no_grad():
        features = backbone.forward_features(torch.rand(1, 1, 101, 101))
    _check_features(backbone, features, 1, STAGE_SIDES[(stem, 101)])


@pytest.mark.parametrize("name", ("small_cnn", "resnet18"))
@pytest.mark.parametrize("in_channels", (3, 4))
def test_multiband_input(name, in_channels):
    backbone = build_backbone(name, in_channels=in_channels).eval()
    with torch.no_grad():
        features = backbone.forward_features(torch.rand(2, in_channels, 32, 32))
    _check_features(backbone, features, 2, STAGE_SIDES[("cifar", 32)])


@pytest.mark.parametrize("name", LARGE)
def test_deep_resnets_build_and_run(name):
    backbone = build_backbone(name, in_channels=1).eval()
    with torch.no_grad():
        pooled = backbone(torch.rand(1, 1, 32, 32))
    assert pooled.shape == (1, 2048)


def test_small_input_flag_selects_stem():
    assert build_backbone("resnet18", small_input=True).conv1.kernel_size == (3, 3)
    large = build_backbone("resnet18", small_input=False)
    assert large.conv1.kernel_size == (7, 7) and isinstance(large.maxpool, torch.nn.MaxPool2d)
    assert build_backbone("resnet18", small_input=True, stem="stride2").conv1.stride == (2, 2)


def test_rgb_imagenet_stem_is_torchvisions():
    backbone = build_backbone("resnet18", in_channels=3, small_input=False)
    assert backbone.conv1.in_channels == 3 and backbone.conv1.kernel_size == (7, 7)
    assert "fc.weight" not in backbone.state_dict()


@pytest.mark.parametrize(
    "size, stem", [(28, "cifar"), (32, "cifar"), (64, "cifar"), (65, "stride2"), (101, "stride2"), (224, "imagenet")]
)
def test_stem_for_image_size(size, stem):
    assert stem_for_image_size(size) == stem


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"'resnet9'.*small_cnn.*resnet152"):
        build_backbone("resnet9")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"in_channels": 0}, "in_channels"),
        ({"in_channels": 1.5}, "in_channels"),
        ({"stem": "huge"}, "'huge'"),
        ({"weights": 3}, "weights"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build_backbone("small_cnn", **kwargs)


def test_wrong_input_channels_named():
    backbone = build_backbone("small_cnn", in_channels=1)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\].*\(2, 3, 32, 32\)"):
        backbone(torch.rand(2, 3, 32, 32))


@pytest.mark.parametrize("bad_size", (0, -3, 32.0, True))
def test_bad_image_size(bad_size):
    with pytest.raises(ValueError, match="image_size"):
        stem_for_image_size(bad_size)
