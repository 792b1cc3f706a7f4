"""`train.amp_cpu`: bfloat16 autocast and channels_last for the network on the CPU, the loss in
float32; off by default, and keyed only when on, so runs trained before the setting existed
keep their keys (and are reused)."""

from __future__ import annotations

import pytest
import torch

from components.training import loop
from components.training.config import TrainConfig, TrainJob
from pipelines.config import load_config
from pipelines.runs import EXECUTION_ONLY, plan_run
from tests.training.fake_version import write_fake_version


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_fake_version(str(tmp_path_factory.mktemp("amp_cpu")), {f"c{i}": 10 for i in range(6)}, seen=4,
                              channels=3)   # with one band both layouts have the same strides


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
    job = TrainJob(dataset=manifest, output_uri=str(out), model={"backbone": "small_cnn", "embedding_dim": 16},
                   loss={"name": "triplet"},
                   train={"epochs": 2, "classes_per_batch": 4, "images_per_class": 4, "loader_workers": 0,
                          "threads_per_worker": 1, **train})
    seen["metrics"] = loop.train(job)
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


def test_amp_cpu_enters_the_run_key_only_when_on(tiny_dataset):
    _, dataset = tiny_dataset

    def planned(*overrides: str):
        config = load_config(None, ["data=synthetic_tiny", "runs=[]", "loss=triplet", *overrides])
        return plan_run(config, "triplet", config.loss, config.train, dataset)

    default, on = planned(), planned("train.amp_cpu=true")
    # Off: the keyed settings are exactly those of a run keyed before the setting existed.
    keyed_before = set(TrainConfig.model_fields) - EXECUTION_ONLY - {"amp_cpu"}
    assert set(default.resolved["train"]) == keyed_before
    assert planned("train.amp_cpu=false").run_key == default.run_key
    assert on.resolved["train"]["amp_cpu"] is True and on.run_key != default.run_key
