"""`train.amp_cpu`: bfloat16 autocast and channels_last for the network on the CPU, the loss in
float32; off by default, and keyed only when on, so runs trained before the setting existed
keep their keys (and are reused)."""

from __future__ import annotations

import pytest
import torch

from components.inference import load_bundle, model_from_bundle
from components.storage import sha256_json
from components.training import loop
from components.training.config import TrainConfig, TrainJob
from pipelines.config import load_config
from pipelines.retrain import config_recipe
from pipelines.runs import keyed_train, plan_run
from tests.training.fake_version import write_fake_version
from tests.training.reporters import CrashAfterFirstEpoch


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_fake_version(str(tmp_path_factory.mktemp("amp_cpu")), {f"c{i}": 10 for i in range(6)}, seen=4,
                              channels=3)   # with one band both layouts have the same strides


def _job(manifest, out, **train) -> TrainJob:
    """Two epochs of a tiny triplet run, in this process."""
    return TrainJob(dataset=manifest, output_uri=str(out), model={"backbone": "small_cnn", "embedding_dim": 16},
                    loss={"name": "triplet"},
                    train={"epochs": 2, "classes_per_batch": 4, "images_per_class": 4, "loader_workers": 0,
                           "threads_per_worker": 1, **train})


def _train_observed(manifest, out, monkeypatch, **train) -> dict:
    """Train two epochs; what the first convolution saw and gave in the last training step,
    and the embedding's dtype as the loss received it."""
    seen: dict = {}
    build = loop.build_model

    def observed_model(**kwargs):
        model = build(**kwargs)
        conv = model.backbone.stem_conv.conv

        def on_conv(module, inputs, output):
            if not module.training:   # validation embeds in float32 whatever the step does
                return
            seen.update(input_channels_last=inputs[0].is_contiguous(memory_format=torch.channels_last)
                        and not inputs[0].is_contiguous(),
                        weight_channels_last=module.weight.is_contiguous(memory_format=torch.channels_last)
                        and not module.weight.is_contiguous(),
                        conv_dtype=output.dtype)
        conv.register_forward_hook(on_conv)
        return model

    build_loss = loop.build_loss

    def observed_loss(name, **params):
        loss = build_loss(name, **params)
        loss.register_forward_pre_hook(lambda module, args: seen.update(loss_dtype=args[0].dtype))
        return loss

    monkeypatch.setattr(loop, "build_model", observed_model)
    monkeypatch.setattr(loop, "build_loss", observed_loss)
    seen["metrics"] = loop.train(_job(manifest, out, **train))
    return seen


def test_amp_cpu_runs_the_network_in_bfloat16_channels_last_and_the_loss_in_float32(manifest, tmp_path, monkeypatch):
    amp = _train_observed(manifest, tmp_path / "amp", monkeypatch, amp_cpu=True)
    assert amp["conv_dtype"] == torch.bfloat16
    assert amp["input_channels_last"] and amp["weight_channels_last"]
    assert amp["loss_dtype"] == torch.float32
    assert 0 < amp["metrics"]["val_mAP"] <= 1


def test_by_default_the_cpu_step_stays_float32_in_the_contiguous_layout(manifest, tmp_path, monkeypatch):
    plain = _train_observed(manifest, tmp_path / "plain", monkeypatch)
    assert plain["conv_dtype"] == torch.float32
    assert not plain["input_channels_last"] and not plain["weight_channels_last"]
    # `amp: false` wins over amp_cpu: nothing runs in bfloat16.
    off = _train_observed(manifest, tmp_path / "off", monkeypatch, amp=False, amp_cpu=True)
    assert off["conv_dtype"] == torch.float32 and not off["input_channels_last"]


# Hashes made at a8627ff, before `amp_cpu` existed: of the keyed train settings of the default
# TrainConfig and of the tiny config's, and of that config's retraining recipe.
KEYED_DEFAULT_BEFORE = "425c786305f07d21948e999c5c349851a932800bf10605b6ff46dcf3b189f542"
KEYED_TINY_BEFORE = "abfc1a640a98ad72e97302467966967b9b44ed2d027bb7f80cc4f2ad67b71c2a"
RECIPE_TINY_BEFORE = "46486fcdf0b19265d0a59a51598c90f83a147930b07bb087b7336802429bb83c"


def _tiny(*overrides: str):
    return load_config(None, ["data=synthetic_tiny", "runs=[]", "loss=triplet", *overrides])


def test_amp_cpu_off_changes_no_key_made_before_it():
    assert sha256_json(keyed_train(TrainConfig())) == KEYED_DEFAULT_BEFORE
    assert sha256_json(keyed_train(_tiny().train)) == KEYED_TINY_BEFORE
    assert sha256_json(keyed_train(_tiny("train.amp_cpu=false").train)) == KEYED_TINY_BEFORE
    assert sha256_json(config_recipe(_tiny())) == RECIPE_TINY_BEFORE


def test_amp_cpu_on_enters_the_run_key(tiny_dataset):
    _, dataset = tiny_dataset

    def planned(*overrides: str):
        config = _tiny(*overrides)
        return plan_run(config, "triplet", config.loss, config.train, dataset)

    default, on = planned(), planned("train.amp_cpu=true")
    assert "amp_cpu" not in default.resolved["train"]
    assert on.resolved["train"]["amp_cpu"] is True and on.run_key != default.run_key
    assert sha256_json(config_recipe(_tiny("train.amp_cpu=true"))) != RECIPE_TINY_BEFORE


def test_a_resumed_amp_cpu_run_ends_with_the_weights_of_an_uninterrupted_one_and_serves_in_float32(manifest, tmp_path):
    straight = loop.train(_job(manifest, tmp_path / "a", amp_cpu=True))
    with pytest.raises(KeyboardInterrupt):
        loop.train(_job(manifest, tmp_path / "b", amp_cpu=True), CrashAfterFirstEpoch(str(tmp_path / "b" / "checkpoints")))
    resumed = loop.train(_job(manifest, tmp_path / "b", amp_cpu=True))
    assert resumed["resumed_from_epoch"] == 1
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-6)
    # The saved model (channels_last tensors) loads into the plain model inference builds.
    models = [model_from_bundle(load_bundle(str(tmp_path / run))).eval() for run in ("a", "b")]
    for (name, value), other in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.equal(value, other), name
    chips = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        served = models[0](chips)
    assert served.dtype == torch.float32 and torch.allclose(served.norm(dim=1), torch.ones(5), atol=1e-5)
