"""What a loss declares (labels, parameters, superclasses, logits, miner), what it takes from
the data, the config check that never builds a loss, and that a new loss needs only its
module, its registry line and its YAML."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import yaml

import components.losses as losses
from components.losses import (
    CLASS_LABELS,
    CONTINUOUS_LABELS,
    SHAPE_PARAMS,
    available_losses,
    build_loss,
    check_loss_params,
    loss_arguments,
    loss_class,
    loss_requirements,
)
from components.losses.base import MetricLoss, check_positive_float
from components.losses.hierarchical import HierarchicalProxyLoss

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "loss"


def yaml_params(name):
    return yaml.safe_load((CONF_DIR / f"{name}.yaml").read_text())["params"]


def test_requirements_say_what_each_loss_needs():
    table = {name: loss_requirements(name) for name in available_losses()}
    assert {n for n, r in table.items() if r["label_kind"] == CONTINUOUS_LABELS} == {"log_ratio"}
    assert all(r["label_kind"] in (CLASS_LABELS, CONTINUOUS_LABELS) for r in table.values())
    assert {n for n, r in table.items() if r["needs_superclasses"]} == {"hierarchical_proxy"}
    assert {n for n, r in table.items() if r["has_logits"]} == {"cross_entropy", "cosine_softmax", "warp"}
    assert {n for n, r in table.items() if r["accepts_miner"]} == {"triplet", "contrastive", "lifted", "multi_similarity"}
    assert {n for n, r in table.items() if r["has_parameters"]} == {
        "cross_entropy", "cosine_softmax", "warp", "proxy_nca", "proxy_anchor", "soft_triple", "hierarchical_proxy",
    }


def test_loss_arguments_add_the_shape_only_for_losses_with_parameters():
    assert loss_arguments("triplet", {"margin": 0.3}, num_classes=7, embedding_dim=16) == {"margin": 0.3}
    assert loss_arguments("proxy_anchor", None, num_classes=7, embedding_dim=16) == {"num_classes": 7, "embedding_dim": 16}
    # Superclasses reach only the losses that use them.
    assert "superclass_of" not in loss_arguments("proxy_anchor", {}, num_classes=4, embedding_dim=8, superclass_of=[0, 0, 1, 1])


def test_hierarchical_takes_the_dataset_superclasses_unless_the_config_chose():
    superclasses = [0, 0, 1, 1]
    shape = dict(num_classes=4, embedding_dim=8, superclass_of=superclasses)
    # conf/loss/hierarchical_proxy.yaml writes superclass_of and num_coarse as null: not chosen.
    arguments = loss_arguments("hierarchical_proxy", yaml_params("hierarchical_proxy"), **shape)
    assert arguments["superclass_of"] == superclasses
    loss = build_loss("hierarchical_proxy", **arguments)
    assert loss.coarse_assignments()[0].tolist() == superclasses
    assert "superclass_of" not in loss_arguments("hierarchical_proxy", {"num_coarse": 2}, **shape)
    assert loss_arguments("hierarchical_proxy", {"superclass_of": [0, 1, 1, 1]}, **shape)["superclass_of"] == [0, 1, 1, 1]
    no_dataset_hierarchy = loss_arguments("hierarchical_proxy", {}, num_classes=4, embedding_dim=8)
    assert "superclass_of" not in no_dataset_hierarchy


@pytest.mark.parametrize("name", available_losses())
def test_every_config_file_passes_the_check(name):
    check_loss_params(name, yaml_params(name))
    check_loss_params(name, {})
    check_loss_params(name, None)


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'margine'") as error:
        check_loss_params("triplet", {"margine": 0.3})
    assert all(word in str(error.value) for word in ("margin", "miner", "mining", "soft_margin", "squared"))
    assert "num_classes" not in str(error.value)


def test_shape_parameters_come_from_the_data():
    with pytest.raises(ValueError, match="num_classes comes from the data"):
        check_loss_params("proxy_anchor", {"num_classes": 10})


@pytest.mark.parametrize(
    "name, params, word",
    [
        ("contrastive", {"miner": "hardest"}, "'hardest'"),
        ("triplet", {"mining": {"name": "batch_all", "params": {"margine": 0.1}}}, "'margine'"),
        ("multi_similarity", {"miner": {"params": {}}}, "'name'"),
        ("hierarchical_proxy", {"base": "proxy_nca", "base_params": {"alpha": 8.0}}, "'alpha'"),
        ("nonexistent", {}, "'nonexistent'"),
    ],
)
def test_nested_names_are_checked(name, params, word):
    with pytest.raises(ValueError, match=word):
        check_loss_params(name, params)


def test_the_check_never_builds_a_loss(monkeypatch):
    def no_kmeans(self):
        raise AssertionError("check_loss_params built the loss (k-means ran)")

    monkeypatch.setattr(HierarchicalProxyLoss, "_kmeans_assignments", no_kmeans)
    @functools.wraps(HierarchicalProxyLoss.__init__)  # keeps the signature the check reads
    def no_init(*args, **kwargs):
        raise AssertionError("check_loss_params built the loss")

    monkeypatch.setattr(HierarchicalProxyLoss, "__init__", no_init)
    check_loss_params("hierarchical_proxy", {"num_coarse": 3, "base_params": {"alpha": 16.0}})


def test_params_must_be_a_mapping():
    with pytest.raises(ValueError, match="mapping"):
        check_loss_params("triplet", ["margin"])


# --- adding a loss: its module, its registry line, its YAML ---------------------------------
class HingeToCentroid(MetricLoss):
    """A toy loss written as a new loss would be: declarations, maths, diagnostics."""

    needs_superclasses: ClassVar[bool] = False

    def __init__(self, margin: float = 0.5):
        super().__init__()
        self.margin = check_positive_float("margin", margin)

    def compute_loss(self, embeddings, labels):
        centroids = torch.stack([embeddings[labels == c].mean(0) for c in labels.unique()])
        own = centroids[torch.searchsorted(labels.unique(), labels)]
        terms = torch.relu((embeddings - own).norm(dim=1) - self.margin)
        self.record(active_fraction=(terms > 0).float().mean())
        return terms.mean()


def test_a_new_loss_needs_only_its_class_its_registry_line_and_its_yaml(monkeypatch, tmp_path):
    monkeypatch.setitem(losses.LOSSES, "hinge_to_centroid", HingeToCentroid)   # the registry line
    (tmp_path / "hinge_to_centroid.yaml").write_text("name: hinge_to_centroid\nparams:\n  margin: 0.5\n")
    params = yaml.safe_load((tmp_path / "hinge_to_centroid.yaml").read_text())["params"]
    assert "hinge_to_centroid" in available_losses()
    check_loss_params("hinge_to_centroid", params)
    assert loss_requirements("hinge_to_centroid") == {
        "label_kind": CLASS_LABELS, "has_parameters": False, "needs_superclasses": False,
        "has_logits": False, "accepts_miner": False,
    }
    arguments = loss_arguments("hinge_to_centroid", params, num_classes=3, embedding_dim=4, superclass_of=[0, 0, 1])
    loss = build_loss("hinge_to_centroid", **arguments)
    value = loss(torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert value.ndim == 0 and set(loss.diagnostics()) == {"active_fraction"}
    assert loss_class("hinge_to_centroid") is HingeToCentroid
    assert not set(arguments) & set(SHAPE_PARAMS)
