"""Mid-epoch checkpoints (`train.checkpoint_every_steps`), end to end in one plain process.

The reference is an uninterrupted run of the same job. A run is "killed" by an exception
raised from the reporter's `on_report` hook right after a mid-epoch checkpoint was written
(the loop itself runs unmodified), then resumed by calling `train` again on the same folder.
The resumed runs must train on exactly the reference's batches (indices and augmented pixels,
step by step) and end with its weights. WARP draws its negatives from torch's global RNG, so
it also checks that a step's randomness does not depend on what ran before it in the process;
the killed run uses a loader process that prefetches ahead of the step, so the checkpoint's
sampler state must be the trained step's, not the loader's.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from components.training.config import TrainConfig, TrainJob
from components.training.label_sampler import LabelNeighbourBatchSampler
from components.training.loop import CHECKPOINT_FILE, LocalReporter, train
from components.training.sampler import PKBatchSampler
from tests.training.fake_version import write_fake_version

EVERY = 2
STEPS_PER_EPOCH = 5


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    per_class = {f"c{i}": n for i, n in enumerate([14, 9, 12, 8, 10, 11, 7, 9])}
    return write_fake_version(str(tmp_path_factory.mktemp("mid_epoch")), per_class, seen=6)


def _job(manifest, out, **train_settings) -> TrainJob:
    return TrainJob(dataset=manifest, output_uri=str(out), model={"backbone": "small_cnn", "embedding_dim": 16},
                    loss={"name": "warp"},
                    train={"epochs": 2, "classes_per_batch": 4, "images_per_class": 4, "loader_workers": 0,
                           "threads_per_worker": 1, "eval_batch_size": 64, "checkpoint_every_steps": EVERY,
                           "batches_per_epoch": STEPS_PER_EPOCH, **train_settings})


class Recorder:
    """`on_step`: every trained step's (epoch, step, positions, images)."""

    def __init__(self):
        self.steps: list[tuple[int, int, np.ndarray, torch.Tensor]] = []

    def __call__(self, epoch, step, positions, images):
        self.steps.append((epoch, step, positions.numpy().copy(), images.detach().clone()))


def _kill_at_mid_epoch_report(number: int):
    """An `on_report` that raises at the `number`-th mid-epoch report (after its checkpoint is written)."""
    seen = []

    def on_report(metrics):
        if "step_in_epoch" in metrics:
            seen.append(metrics)
            if len(seen) == number:
                raise Killed(metrics)
    return on_report


def _checkpoint(folder) -> dict:
    with open(folder / CHECKPOINT_FILE, "rb") as handle:
        return torch.load(io.BytesIO(handle.read()), weights_only=False)


def test_a_run_killed_mid_epoch_resumes_with_the_batches_and_weights_of_an_uninterrupted_run(manifest, tmp_path):
    straight_steps, straight_reports = Recorder(), LocalReporter(str(tmp_path / "a" / "checkpoints"))
    straight = train(_job(manifest, tmp_path / "a"), straight_reports, on_step=straight_steps)
    assert [(e, s) for e, s, _, _ in straight_steps.steps] == [(e, s) for e in range(2) for s in range(STEPS_PER_EPOCH)]

    # Killed twice: in epoch 0, then (on the first resume) in epoch 1; resumed to the end.
    # The killed runs prefetch through a loader process: the sampler runs ahead of the step.
    folder = tmp_path / "b" / "checkpoints"
    steps, resumed_at = Recorder(), []
    for kill in (1, 3, None):
        reporter = LocalReporter(str(folder), on_report=None if kill is None else _kill_at_mid_epoch_report(kill))
        job = _job(manifest, tmp_path / "b", **({"loader_workers": 1, "prefetch_batches": 2} if kill else {}))
        if kill is None:
            resumed = train(job, reporter, on_step=steps)
        else:
            with pytest.raises(Killed) as killed:
                train(job, reporter, on_step=steps)
            saved = _checkpoint(folder)
            assert saved["mid_epoch"] and saved["sampler"]["start_batch"] == killed.value.args[0]["step_in_epoch"]
        resumed_at.append(len(steps.steps))
    # Mid-epoch reports at global steps 2, 4, 6, 8 (10 ends epoch 1): killed after step 2
    # (epoch 0), then at the resumed run's third report, step 8 (epoch 1, 3 steps done).
    assert resumed_at == [2, 8, 10]

    assert [(e, s) for e, s, _, _ in steps.steps] == [(e, s) for e, s, _, _ in straight_steps.steps]
    for (epoch, step, positions, images), (_, _, ref_positions, ref_images) in zip(steps.steps, straight_steps.steps):
        assert np.array_equal(positions, ref_positions), (epoch, step)
        assert torch.equal(images, ref_images), (epoch, step)    # same augmentation, pixel for pixel

    a, b = _checkpoint(tmp_path / "a" / "checkpoints"), _checkpoint(folder)
    for key, value in a["model"].items():
        assert torch.allclose(value.float(), b["model"][key].float(), rtol=1e-6, atol=1e-7), key
    for key, value in a["loss"].items():
        assert torch.allclose(value, b["loss"][key], rtol=1e-6, atol=1e-7), key
    # The resumed epoch reports the means over all of its steps, as the uninterrupted one did.
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-6)
    assert resumed["resumed_from_epoch"] == 1 and resumed["resumed_from_step"] == resumed_at[1]
    assert straight["resumed_from_step"] == -1


def test_mid_epoch_reports_carry_step_counters_only_and_leave_epoch_selection_alone(manifest, tmp_path):
    with_steps = LocalReporter(str(tmp_path / "a"))
    train(_job(manifest, tmp_path / "a", epochs=1), with_steps)
    per_epoch = LocalReporter(str(tmp_path / "b"))
    train(_job(manifest, tmp_path / "b", epochs=1, checkpoint_every_steps=None), per_epoch)
    mid = [m for m in with_steps.history if "step_in_epoch" in m]
    assert [m["global_step"] for m in mid] == list(range(EVERY, len(mid) * EVERY + 1, EVERY)) and mid
    assert all(set(m) == {"global_step", "epoch_in_progress", "step_in_epoch"} for m in mid)
    epochs = [m for m in with_steps.history if "epoch" in m]
    assert len(epochs) == 1 and len(per_epoch.history) == 1
    for key in ("epoch", "train_loss", "val_mAP", "is_best", "best_val_mAP"):
        assert epochs[0][key] == pytest.approx(per_epoch.history[0][key], rel=1e-6), key


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "often"])
def test_checkpoint_every_steps_must_be_a_positive_count(value):
    with pytest.raises(ValidationError, match="checkpoint_every_steps"):
        TrainConfig(checkpoint_every_steps=value)
    assert TrainConfig().checkpoint_every_steps is None and TrainConfig(checkpoint_every_steps=50).checkpoint_every_steps == 50


# --- sampler state round trips ------------------------------------------------------------

def _pk(world, rank, seed=3):
    labels = np.repeat(np.arange(9), [14, 3, 8, 8, 5, 21, 2, 9, 6])
    return PKBatchSampler(labels, 4, 3, rank=rank, world_size=world, seed=seed)


def _neighbours(world, rank, seed=3):
    labels = np.random.default_rng(1).normal(size=(90, 2))
    return LabelNeighbourBatchSampler(labels, 12, 2, rank=rank, world_size=world, seed=seed)


@pytest.mark.parametrize("make", [_pk, _neighbours], ids=["pk", "label_neighbours"])
@pytest.mark.parametrize("world", [1, 2])
def test_sampler_state_round_trips_mid_epoch_on_every_rank(make, world):
    for rank in range(world):
        sampler = make(world, rank)
        sampler.set_epoch(2)
        whole = list(sampler)
        assert len(whole) == len(sampler) > 4
        # A loader that prefetched 3 batches past the 2 the loop trained: the state is the loop's.
        iterator = iter(sampler)
        for _ in range(5):
            next(iterator)
        state = sampler.state_dict(batches_done=2)
        assert state == {"epoch": 2, "start_batch": 2, "seed": 3}
        fresh = make(world, rank)
        fresh.load_state_dict(state)
        rest = list(fresh)
        assert len(rest) == len(whole) - 2
        assert all(np.array_equal(a, b) for a, b in zip(rest, whole[2:], strict=True))
        # By default the state is what the sampler's own iterator handed out.
        assert sampler.state_dict() == {"epoch": 2, "start_batch": 5, "seed": 3}
        assert sampler.state_dict(batches_done=len(sampler)) == {"epoch": 3, "start_batch": 0, "seed": 3}
        with pytest.raises(ValueError, match="batches_done"):
            sampler.state_dict(batches_done=len(sampler) + 1)
