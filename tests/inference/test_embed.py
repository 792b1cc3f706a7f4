"""One inference path: arrays and streamed splits give the features of the model called by hand."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from components import constants as C
from components.data.reader import load_split
from components.data.versions import open_version
from components.inference import embed_arrays, embed_split, load_model, make_bundle, save_bundle
from components.losses import build_loss
from components.models import build_model
from tests.training.fake_version import write_fake_version

SIZE = 16


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    per_class = {f"c{i}": n for i, n in enumerate([10, 8, 12, 9, 7, 11])}
    return open_version(write_fake_version(str(tmp_path_factory.mktemp("inference")), per_class, seen=4, samples_per_shard=8))


def by_hand(model, images: np.ndarray, taps) -> dict[str, np.ndarray]:
    """The reference: NCHW floats in [0, 1], normalised to [-1, 1], one forward pass."""
    nchw = images[:, None] if images.ndim == 3 else np.transpose(images, (0, 3, 1, 2))
    tensor = (torch.from_numpy(nchw.astype(np.float32)) / 255.0 - 0.5) / 0.5
    with torch.no_grad():
        return {tap: value.numpy() for tap, value in model.eval().extract(tensor, taps=taps).items()}


@pytest.mark.parametrize("channels", [1, 3])
def test_embed_arrays_matches_the_model_called_by_hand_for_any_batch_size(channels):
    torch.manual_seed(0)
    model = build_model("small_cnn", embedding_dim=16, image_size=SIZE, in_channels=channels)
    shape = (13, SIZE, SIZE) if channels == 1 else (13, SIZE, SIZE, 3)
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    expected = by_hand(model, images, ("embedding", "penultimate"))
    for batch_size in (1, 5, 64):
        result = embed_arrays(model, images, ("embedding", "penultimate"), batch_size=batch_size)
        for tap in expected:
            assert result[tap].dtype == np.float32
            np.testing.assert_allclose(result[tap], expected[tap], rtol=1e-5, atol=1e-6)


def test_embed_arrays_keeps_the_models_mode_and_rejects_bad_input():
    model = build_model("small_cnn", embedding_dim=16, image_size=SIZE).train()
    embed_arrays(model, np.zeros((2, SIZE, SIZE), np.uint8))
    assert model.training
    with pytest.raises(ValueError, match="images must be"):
        embed_arrays(model, np.zeros((SIZE, SIZE), np.uint8))


@pytest.mark.parametrize("loader_workers", [0, 2])
def test_embed_split_streams_the_split_in_key_order(version, loader_workers):
    torch.manual_seed(0)
    model = build_model("small_cnn", embedding_dim=16, image_size=SIZE)
    reference = load_split(version, C.SPLIT_UNSEEN)
    result = embed_split(model, version, C.SPLIT_UNSEEN, ("embedding",), batch_size=7, loader_workers=loader_workers)
    assert result.keys == reference.keys and result.metas == reference.metas
    assert result.labels == [reference.classes[i] for i in reference.labels]
    assert result.label_indices.tolist() == reference.labels.tolist()
    np.testing.assert_allclose(result.features["embedding"], by_hand(model, reference.images, ("embedding",))["embedding"],
                               rtol=1e-5, atol=1e-6)
    assert set(result.shards) <= {s["name"] for s in version.shards(C.SPLIT_UNSEEN)}


def test_evaluate_model_embeds_in_process_and_scores_like_sklearn(version, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)   # no second Ray worker pool: Ray is not even importable
    from components.evaluation.model_eval import evaluate_model

    torch.manual_seed(0)
    model = build_model("small_cnn", embedding_dim=16, image_size=SIZE)
    loss = build_loss("cross_entropy", num_classes=4, embedding_dim=16)
    save_bundle(make_bundle(model, loss, "cross_entropy", {"num_classes": 4, "embedding_dim": 16},
                            version.classes(C.SPLIT_TRAIN), version.uri, {}, 1), str(tmp_path / "model"))
    result = evaluate_model(version.uri, str(tmp_path / "model"), taps=("embedding",), ks=(1,), batch_size=5)

    unseen = load_split(version, C.SPLIT_UNSEEN)
    features = embed_arrays(load_model(str(tmp_path / "model")), unseen.images)["embedding"]
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    scores = features @ features.T
    aps = []
    for q in range(len(features)):   # leave-one-out AP per query, sklearn as the reference
        others = np.arange(len(features)) != q
        aps.append(average_precision_score(unseen.labels[others] == unseen.labels[q], scores[q, others]))
    assert result.metrics["embedding"][C.METRIC_MAP] == pytest.approx(float(np.mean(aps)), abs=1e-5)
    val = load_split(version, C.SPLIT_VAL)
    with torch.no_grad():
        logits = loss.logits(torch.from_numpy(embed_arrays(model, val.images)["embedding"]))
    assert result.accuracy == pytest.approx(float((logits.argmax(1).numpy() == val.labels).mean()))
