"""The default augmentation suits the source's imagery: `train.rotation` left unset resolves on the
driver, before the run is keyed, to any angle for overhead chips and to none for upright
imagery (Fashion-MNIST); an explicit setting wins; overhead runs keep the keys they had when
"any" was every source's default, and so do runs without augmentation (their rotation stays
unset: it does nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.data.sources import SOURCES, source_is_upright
from components.storage import Layout
from components.training.data import train_transform
from pipelines.config import load_config
from pipelines.runs import plan_run


def _as_fashion_version(tmp_path, manifest_uri: str) -> str:
    """The tiny synthetic version's manifest re-labelled as ingested from Fashion-MNIST."""
    root, relative = Layout.split_manifest_uri(manifest_uri)
    manifest = json.loads((Path(root) / relative).read_text())
    manifest["source"] = {**manifest["source"], "source": "fashion_mnist"}
    path = tmp_path / Layout.manifest(manifest["dataset"], manifest["version"])
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(manifest))
    return str(path)


def _planned(manifest: str, *overrides: str):
    config = load_config(None, ["data=synthetic_tiny", "runs=[]", "loss=triplet", *overrides])
    return plan_run(config, "triplet", config.loss, config.train, manifest)


def test_only_fashion_mnist_is_upright():
    assert {name for name, source in SOURCES.items() if source.upright} == {"fashion_mnist"}
    assert source_is_upright({"source": "fashion_mnist"}) and not source_is_upright({"source": "folder"})
    with pytest.raises(ValueError, match="'nowhere' is unknown"):
        source_is_upright({"source": "nowhere"})


def test_rotation_follows_the_source_unless_the_config_sets_it(tiny_dataset, tmp_path):
    _, overhead = tiny_dataset
    fashion = _as_fashion_version(tmp_path, overhead)
    assert load_config(None, []).train.rotation is None                      # left to the source
    assert _planned(overhead).train.rotation == "any"
    assert _planned(fashion).train.rotation == "none"
    assert _planned(fashion, "train.rotation=right").train.rotation == "right"
    assert _planned(overhead, "train.rotation=none").train.rotation == "none"
    # What the workers build from the resolved settings: no rotation for the upright source.
    assert train_transform(_planned(fashion).train).augment.rotation == "none"
    unaugmented = _planned(fashion, "train.augment=false")
    assert unaugmented.train.rotation is None and train_transform(unaugmented.train).augment is None


def test_the_key_names_the_resolved_rotation_and_overhead_keys_are_unchanged(tiny_dataset, tmp_path):
    _, overhead = tiny_dataset
    fashion = _as_fashion_version(tmp_path, overhead)
    # "any" was every source's default before: an overhead run keeps the key it had then.
    planned = _planned(overhead)
    assert planned.run_key == _planned(overhead, "train.rotation=any").run_key
    assert planned.resolved["train"]["rotation"] == "any"
    assert _planned(fashion).resolved["train"]["rotation"] == "none"
    assert _planned(fashion).run_key != _planned(fashion, "train.rotation=any").run_key
    assert _planned(fashion).run_key == _planned(fashion, "train.rotation=none").run_key
    # Without augmentation the rotation does nothing: keyed as before, on any source.
    for manifest in (overhead, fashion):
        assert _planned(manifest, "train.augment=false").run_key == \
            _planned(manifest, "train.augment=false", "train.rotation=any").run_key
