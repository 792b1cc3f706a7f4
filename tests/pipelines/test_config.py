"""Config errors name the key and list the valid choices; overrides compose as documented."""

from __future__ import annotations

import pytest

from pipelines.config import ConfigError, load_config


def error_of(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, list(overrides))
    return str(info.value)


def test_quickstart_loads_and_overrides_apply(tmp_path):
    config = load_config(None, ["shard.samples_per_shard=250", "split.seed=7", f"storage.root={tmp_path}"])
    assert config.shard.samples_per_shard == 250 and config.split.seed == 7
    assert config.storage.root == str(tmp_path)


def test_switching_source_starts_the_data_section_afresh(tmp_path):
    config = load_config(None, ["data.source=folder", f"data.root={tmp_path}"])
    assert config.data.source == "folder" and config.data.root == str(tmp_path)


def test_group_selection_loads_the_group_file():
    assert load_config(None, ["data=fashion_mnist"]).data.source == "fashion_mnist"
    message = error_of("data=no_such_dataset")
    assert "no_such_dataset" in message and "fashion_mnist" in message


def test_unknown_key_is_named_with_valid_keys():
    message = error_of("shard.samples_per_shrd=10")
    assert "shard.samples_per_shrd" in message and "samples_per_shard" in message
    message = error_of("data.source=folder", "data.root=/x", "data.rot=/y")
    assert "data.rot" in message and "root" in message and "extensions" in message
    assert "unknown key 'splitt'" in error_of("splitt.seed=1")


def test_bad_values_are_named_with_choices():
    message = error_of("data.source=nowhere")
    assert "data.source" in message and "synthetic_cars" in message and "folder" in message
    message = error_of("shard.channels=0")
    assert "shard.channels" in message and "between 1 and 16" in message
    message = error_of("model.backbone=resnet99")
    assert "model.backbone" in message and "resnet152" in message and "small_cnn" in message
    assert "split.seen_fraction" in error_of("split.seen_fraction=1.5")
    assert "data.root" in error_of("data.source=folder")             # required key missing


def test_malformed_override():
    assert "key=value" in error_of("shard.samples_per_shard")
    message = error_of("runs=[{name:")          # what a shell makes of an unquoted flow mapping
    assert "runs=[{name:" in message and "not valid YAML" in message
