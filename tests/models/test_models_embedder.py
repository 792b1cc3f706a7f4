"""EmbeddingModel: forward, feature taps (checked against direct backbone/head calls), build_model."""

import pytest
import torch

from components.models import (
    EmbeddingHead,
    EmbeddingModel,
    available_taps,
    build_backbone,
    build_model,
)


@pytest.fixture(scope="module")
def model():
    return build_model("small_cnn", embedding_dim=24, scale=2.0).eval()


def test_forward_is_scaled_unit_embedding(model):
    with torch.no_grad():
        embedding = model(torch.rand(5, 1, 32, 32))
    assert embedding.shape == (5, 24)
    torch.testing.assert_close(embedding.norm(dim=1), torch.full((5,), 2.0))


def test_extract_all_taps_match_direct_computation(model):
    x = torch.rand(4, 1, 32, 32)
    taps = available_taps(model)
    assert taps == ("embedding", "embedding_raw", "penultimate", "stage4", "stage3", "stage2", "stage1")
    with torch.no_grad():
        outputs = model.extract(x, taps)
        features = model.backbone.forward_features(x)
        raw = model.head.project(features["pooled"])
    assert list(outputs) == list(taps)
    dims = {"embedding": 24, "embedding_raw": 24, "penultimate": 256, "stage4": 256, "stage3": 128, "stage2": 64, "stage1": 32}
    assert {tap: tuple(value.shape) for tap, value in outputs.items()} == {tap: (4, dim) for tap, dim in dims.items()}
    torch.testing.assert_close(outputs["embedding"], model(x))
    torch.testing.assert_close(outputs["embedding_raw"], raw)
    torch.testing.assert_close(outputs["penultimate"], model.backbone(x))
    for stage in ("stage1", "stage2", "stage3", "stage4"):
        torch.testing.assert_close(outputs[stage], features[stage].mean(dim=(2, 3)))


def test_extract_defaults_and_single_name(model):
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert list(model.extract(x)) == ["embedding", "penultimate"]
        assert list(model.extract(x, "stage3")) == ["stage3"]


def test_unknown_tap_lists_valid(model):
    with pytest.raises(ValueError, match=r"'stage9'.*embedding, embedding_raw, penultimate"):
        model.extract(torch.rand(1, 1, 32, 32), ("embedding", "stage9"))


def test_build_model_101_uses_stride2_stem_and_records_config():
    model = build_model("resnet18", embedding_dim=32, image_size=101, in_channels=2).eval()
    assert model.config["stem"] == "stride2" and model.config["in_channels"] == 2
    assert model.backbone.conv1.stride == (2, 2) and isinstance(model.backbone.maxpool, torch.nn.Identity)
    with torch.no_grad():
        outputs = model.extract(torch.rand(1, 2, 101, 101), ("embedding", "penultimate", "stage3"))
    assert {tap: tuple(value.shape) for tap, value in outputs.items()} == {
        "embedding": (1, 32),
        "penultimate": (1, 512),
        "stage3": (1, 256),
    }
    rebuilt = build_model(**model.config)
    assert rebuilt.config == model.config


def test_unnormalised_model():
    model = build_model(normalize=False, batchnorm=False, embedding_dim=8).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        outputs = model.extract(x, ("embedding", "embedding_raw"))
    torch.testing.assert_close(outputs["embedding"], outputs["embedding_raw"])


def test_mismatched_parts_are_named():
    backbone = build_backbone("small_cnn")
    with pytest.raises(ValueError, match="in_features=100.*out_features=256"):
        EmbeddingModel(backbone, EmbeddingHead(100))
    with pytest.raises(TypeError, match="Linear"):
        EmbeddingModel(backbone, torch.nn.Linear(256, 8))
    with pytest.raises(ValueError, match="'resnet7'"):
        build_model("resnet7")
