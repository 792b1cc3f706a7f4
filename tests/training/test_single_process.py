"""The training loop in one plain process: no Ray, checkpoints on the store, exact resume,
bounded memory, and capabilities asked of the loss rather than its name."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
import torch

from components import constants as C
from components.inference import load_bundle
from components.training.config import TrainJob
from components.training.loop import CHECKPOINT_FILE, train
from tests.training.fake_version import write_fake_version
from tests.training.reporters import CrashAfterFirstEpoch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_worker(root, per_class: int, size: int, channels: int, *flags: str) -> dict:
    manifest = write_fake_version(str(root), {f"c{i:02d}": per_class for i in range(10)}, seen=8, size=size,
                                  channels=channels, samples_per_shard=200)
    done = subprocess.run([sys.executable, "-m", "tests.training.run_worker", manifest, str(root / "model"), *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_training_runs_in_a_process_where_ray_cannot_be_imported(tmp_path):
    result = run_worker(tmp_path, 12, 16, 1, "block-ray")
    assert not result["ray_imported"]
    assert result["metrics"]["epoch"] == 2 and result["metrics"][f"val_{C.METRIC_MAP}"] > 0
    assert (tmp_path / "model" / "model.pt").exists()
    assert (tmp_path / "model" / "checkpoints" / CHECKPOINT_FILE).exists()
    assert (tmp_path / "datasets").exists() and list(tmp_path.glob("datasets/*/*/samples.parquet"))


def test_peak_memory_does_not_grow_with_a_four_times_larger_version(tmp_path):
    """96×96 four-band chips (.npy, 36 KB decoded), 800 vs 3,200: holding the training split in
    memory would add ~53 MB (10 % of the worker); streamed, only the index grows (~24 B per
    chip) while the decoded-chip cache (2 MB) and the prefetched batches keep their size.
    Run-to-run noise of peak RSS here is about ±12 MB."""
    small = run_worker(tmp_path / "small", 80, 96, 4)
    large = run_worker(tmp_path / "large", 320, 96, 4)
    in_memory_growth_mb = (320 - 80) * 8 * 0.75 * 96 * 96 * 4 / 2**20
    for key in ("peak_rss_mb", "loader_peak_rss_mb"):
        assert large[key] <= 1.1 * small[key], (key, small, large)
        assert large[key] - small[key] < 0.6 * in_memory_growth_mb, (key, small, large)


def _job(manifest, out, **train):
    return TrainJob(dataset=manifest, output_uri=str(out), model={"backbone": "small_cnn", "embedding_dim": 16},
                    loss={"name": "proxy_anchor"},
                    train={"epochs": 2, "classes_per_batch": 4, "images_per_class": 4, "loader_workers": 0,
                           "threads_per_worker": 1, "loss_lr_multiplier": 10, **train})


def _last_checkpoint(folder) -> dict:
    with open(folder / CHECKPOINT_FILE, "rb") as handle:
        return torch.load(io.BytesIO(handle.read()), weights_only=False)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    per_class = {f"c{i}": n for i, n in enumerate([14, 9, 12, 8, 10, 11, 7, 9])}
    return write_fake_version(str(tmp_path_factory.mktemp("resume")), per_class, seen=6, attributes=True)


def test_resuming_from_a_checkpoint_gives_the_weights_of_an_uninterrupted_run(manifest, tmp_path):
    straight = train(_job(manifest, tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt):
        train(_job(manifest, tmp_path / "b"), CrashAfterFirstEpoch(str(tmp_path / "b" / "checkpoints")))
    resumed = train(_job(manifest, tmp_path / "b"))
    assert resumed["resumed_from_epoch"] == 1 and straight["resumed_from_epoch"] == -1
    a, b = _last_checkpoint(tmp_path / "a" / "checkpoints"), _last_checkpoint(tmp_path / "b" / "checkpoints")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert torch.equal(a["loss"]["proxies"], b["loss"]["proxies"])
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-6)


def test_the_loop_asks_the_loss_what_it_needs(manifest, tmp_path, monkeypatch):
    from components.losses import loss_class

    # Superclasses from the manifest reach a loss that wants them.
    train(_job(manifest, tmp_path / "h", epochs=1).model_copy(
        update={"loss": TrainJob.model_fields["loss"].annotation(name="hierarchical_proxy")}))
    params = load_bundle(str(tmp_path / "h"))["loss_params"]
    assert params["superclass_of"] == [0, 1, 0, 1, 0, 1]
    # Continuous labels from the samples' attributes for a continuous-label loss.
    job = _job(manifest, tmp_path / "c", epochs=1)
    metrics = train(job.model_copy(update={"loss": job.loss.model_copy(update={"name": "log_ratio"})}))
    assert metrics["epoch"] == 1 and metrics["train_loss"] >= 0
    # Per-step diagnostics, averaged over the epoch.
    cls = loss_class("proxy_anchor")
    values = iter(range(1000))
    monkeypatch.setattr(cls, "diagnostics", lambda self: {"probe": float(next(values))}, raising=False)
    metrics = train(_job(manifest, tmp_path / "d", epochs=1, batches_per_epoch=3))
    assert metrics["train_probe"] == pytest.approx(1.0)   # mean of 0, 1, 2
