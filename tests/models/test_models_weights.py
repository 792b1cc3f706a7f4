"""Backbone weights from local files: exact round trips, band adaptation, clear errors."""

import numpy as np
import pytest
import torch

from components.models import adapt_input_channels, build_backbone, build_model, import_torchvision


def _randomise_batchnorm(module: torch.nn.Module, seed: int = 0) -> None:
    # Fresh BatchNorm layers are the identity in eval mode; random statistics make a round
    # trip that forgot them detectable.
    generator = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.running_mean.copy_(torch.randn(layer.running_mean.shape, generator=generator) * 0.1)
            layer.running_var.copy_(torch.rand(layer.running_var.shape, generator=generator) + 0.5)
            layer.weight.data.copy_(torch.rand(layer.weight.shape, generator=generator) + 0.5)
            layer.bias.data.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.1)


@pytest.mark.parametrize("name", ("small_cnn", "resnet18"))
def test_round_trip_gives_identical_outputs(tmp_path, name):
    source = build_backbone(name, in_channels=1)
    _randomise_batchnorm(source)
    path = tmp_path / f"{name}.pt"
    torch.save(source.state_dict(), path)

    loaded = build_backbone(name, in_channels=1, weights=path)
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(source.eval()(x), loaded.eval()(x))


def test_round_trip_through_build_model_and_wrappers(tmp_path):
    source = build_model("small_cnn", embedding_dim=16)
    _randomise_batchnorm(source)
    # A whole EmbeddingModel state_dict saved from a DDP wrapper, inside a checkpoint dict.
    wrapped = {f"module.{key}": value for key, value in source.state_dict().items()}
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": wrapped, "epoch": 3}, path)

    loaded = build_model("small_cnn", embedding_dim=16, weights=str(path))
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(source.backbone.eval()(x), loaded.backbone.eval()(x))


def test_torchvision_rgb_weights_adapt_to_one_band(tmp_path):
    # Stand-in for an ImageNet file: a torchvision resnet18 state_dict, fc.* keys included.
    torchvision_net = import_torchvision().models.resnet18(weights=None)
    _randomise_batchnorm(torchvision_net, seed=1)
    path = tmp_path / "resnet18_rgb.pth"
    torch.save(torchvision_net.state_dict(), path)

    rgb = build_backbone("resnet18", in_channels=3, small_input=False, weights=path).eval()
    gray = build_backbone("resnet18", in_channels=1, small_input=False, weights=path).eval()
    assert gray.conv1.weight.shape == (64, 1, 7, 7)
    # The adapted conv must see a grey chip exactly as the RGB conv sees it copied to 3 bands.
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(gray(x), rgb(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-5)
        # ...and the RGB backbone equals torchvision's network up to its classifier.
        torchvision_net.eval().fc = torch.nn.Identity()
        torch.testing.assert_close(rgb(x.repeat(1, 3, 1, 1)), torchvision_net(x.repeat(1, 3, 1, 1)))


def test_adapt_input_channels_matches_reference():
    weight = torch.randn(5, 3, 3, 3)
    reference = weight.numpy().sum(axis=1, keepdims=True)
    np.testing.assert_allclose(adapt_input_channels(weight, 1).numpy(), reference, rtol=1e-6)
    four = adapt_input_channels(weight, 4).numpy()
    assert four.shape == (5, 4, 3, 3)
    np.testing.assert_allclose(four.sum(axis=1, keepdims=True), reference, rtol=1e-5, atol=1e-6)


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_backbone("small_cnn", weights=missing)


def test_not_a_state_dict_is_named(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="list.pt.*state_dict"):
        build_backbone("small_cnn", weights=path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="garbage.pt"):
        build_backbone("small_cnn", weights=garbage)


def test_other_architecture_names_keys(tmp_path):
    path = tmp_path / "small.pt"
    torch.save(build_backbone("small_cnn").state_dict(), path)
    with pytest.raises(ValueError, match=r"small.pt.*missing keys.*conv1.weight.*unexpected keys.*stage1.conv.weight"):
        build_backbone("resnet18", weights=path)


def test_other_stem_names_the_first_conv(tmp_path):
    path = tmp_path / "cifar_stem.pt"
    torch.save(build_backbone("resnet18", small_input=True).state_dict(), path)
    with pytest.raises(ValueError, match=r"conv1.weight: file \(64, 1, 3, 3\) vs model \(64, 1, 7, 7\).*stem"):
        build_backbone("resnet18", small_input=False, weights=path)
