"""The typed settings of one training run: `TrainConfig` (the `train:` section) and `TrainJob`.

`TrainConfig` is the schema of the `train:` config section; `pipelines/config.py` composes it
(field names and defaults are the ones configs have always used). `TrainJob` is everything
the workers of one run need (dataset, output, model, loss, train settings, tracking); it
crosses the Ray boundary as a plain dict (`to_dict` / `from_dict`), and `from_dict` also
accepts the untyped dict the train driver passed before this module existed.

How the cores of one training worker are used: `compute_threads()` torch threads run
forward/backward (`threads_per_worker`, by default one per reserved CPU, `cpus_per_worker`,
which is what the driver asks Ray for), and `loader_workers` processes beside them read,
decode, augment and assemble the next batches ahead of the step. Loaders are light next to
the step (one loader delivers ~25× the small_cnn step rate at 32×32, so it is busy a few % of
the time), hence they are not subtracted from the compute threads: on a 2-core machine one
worker with `cpus_per_worker: 2` keeps both cores on the step and hides the input behind it.
Large chips or a GPU step want more loaders; reserve CPUs for them with `cpus_per_worker`
and set `threads_per_worker` to what remains.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from components.losses.config import LossConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1)
    classes_per_batch: int = Field(16, ge=1)      # P
    images_per_class: int = Field(4, ge=1)        # K
    batches_per_epoch: int | None = Field(None, ge=1)   # default: the sampler's epoch length
    lr: float = Field(1e-3, gt=0)
    loss_lr_multiplier: float = Field(1.0, gt=0)  # proxies / classifier weights
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    warmup_epochs: float = Field(0.0, ge=0)
    augment: bool = True
    # Rotations the augmentation draws: any angle, multiples of 90 degrees, or none. None: the
    # source's default, resolved on the driver before the run is keyed (pipelines.runs.plan_run):
    # "any" for overhead chips (no canonical up), "none" for upright imagery (Fashion-MNIST).
    rotation: Literal["any", "right", "none"] | None = None
    seed: int = 0
    amp: bool = True                              # network (backbone + head) under bfloat16 autocast on GPU; loss in float32
    # With `amp`, the same on the CPU, the network in channels_last (the layout oneDNN's
    # bfloat16 convolutions run fastest in): on a CPU with AVX-512 BF16 or AMX (this machine:
    # avx512_bf16) the small_cnn step at 28×28 takes half the float32 time. Off by default: the
    # trained numbers change (one Fashion-MNIST triplet run: test mAP −0.5 points), and a CPU
    # without bfloat16 units emulates it, slower. `amp: false` turns it off too.
    amp_cpu: bool = False
    init_from: str | None = None                  # a run name of this config's `runs`, or a model URI
    freeze_backbone: bool = False
    num_workers: int = Field(1, ge=1)             # Ray Train workers (DDP)
    use_gpu: bool | None = None                   # None: when the cluster has GPUs
    cpus_per_worker: float = Field(1.0, gt=0)     # CPUs Ray reserves per worker (= default torch threads)
    threads_per_worker: int | None = Field(None, ge=1)   # torch threads; None: see compute_threads
    max_failures: int = Field(1, ge=0)            # worker-group restarts from the last checkpoint
    fail_at_epoch: int | None = None              # test hook: kill one worker once at this epoch
    # Mid-epoch checkpoints every N training steps (counted over the run), besides the one at
    # each epoch's end; None: per epoch only. Each costs one write of model + loss +
    # optimizer state, ~3× the model's size with AdamW (small_cnn: 14 MiB, ~30 ms; ResNet-50:
    # 276 MiB, ~1.7 s on this machine), and under Ray Train a report every worker takes part
    # in; with evaluate.per_epoch Ray keeps every checkpoint, these too. Worth it when an
    # epoch is long enough that losing one hurts. Not for tune sweeps: Tune expects the
    # sweep's metric in every report, and a mid-epoch report carries none.
    checkpoint_every_steps: int | None = Field(None, ge=1)
    dataset: str | None = None                    # manifest URI (default: the latest ingested version)
    # --- input pipeline (per training worker) ---------------------------------------------
    # Loader processes that read, decode, augment and batch ahead of the step (0: in the
    # training process). One suits 32×32 chips on 2 cores; large chips or GPUs want more.
    loader_workers: int = Field(1, ge=0)
    prefetch_batches: int = Field(2, ge=1)        # batches each loader process keeps ready
    cache_mb: float = Field(64.0, ge=0)           # decoded-chip LRU per loader process (bounds memory)
    eval_batch_size: int = Field(256, ge=1)       # validation embedding batch

    @field_validator("checkpoint_every_steps", mode="before")
    @classmethod
    def _steps_are_a_count(cls, value: Any) -> Any:
        if isinstance(value, bool) or (value is not None and not isinstance(value, int)):
            raise ValueError(f"train.checkpoint_every_steps must be a positive whole number of training steps"
                             f" (or null for per-epoch checkpoints only), got {value!r}")
        return value

    def compute_threads(self) -> int:
        """torch threads of one worker: `threads_per_worker`, else one per reserved CPU.
        (Ray would otherwise leave a worker with one thread per CPU it reserved, rounded down
        to at least one; the loop sets this explicitly with torch.set_num_threads.)"""
        if self.threads_per_worker is not None:
            return self.threads_per_worker
        return max(1, math.floor(self.cpus_per_worker))


# The worker's loss section is the config's own schema (names checked against the loss's
# constructor, never built): one definition for the driver and the workers.
LossSpec = LossConfig


class TrackingSpec(_Section):
    uri: str | None = None
    run_id: str | None = None                     # rank 0 logs metrics and the model to this MLflow run


class TrainJob(_Section):
    """One training run as its workers see it."""

    dataset: str                                  # manifest URI of the dataset version
    output_uri: str                               # folder of the model bundle
    model: dict[str, Any]                         # build_model arguments (backbone, embedding_dim, ...)
    loss: LossSpec
    train: TrainConfig = TrainConfig()
    tracking: TrackingSpec = TrackingSpec()
    checkpoint_uri: str | None = None             # single-process runs: default <output_uri>/checkpoints

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-able dict (what Ray ships to the workers)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainJob":
        """Parse `to_dict`'s output, or the loop config of the train driver: the same keys plus
        a top-level `threads_per_worker` (moved into `train`) and the train section's name in
        `train.dataset` (the run's `dataset` wins)."""
        if not isinstance(data, dict):
            raise TypeError(f"a training job must be a dict (TrainJob.to_dict()), got {type(data).__name__}")
        data = dict(data)
        threads = data.pop("threads_per_worker", None)
        train = dict(data.get("train") or {})
        if threads is not None and train.get("threads_per_worker") is None:
            train["threads_per_worker"] = threads
        data["train"] = train
        if "dataset" not in data and train.get("dataset"):
            data["dataset"] = train["dataset"]
        missing = [key for key in ("dataset", "output_uri", "model", "loss") if key not in data]
        if missing:
            raise ValueError(f"training job is missing {missing}; expected keys dataset, output_uri, model, loss "
                             "(and optionally train, tracking, checkpoint_uri)")
        return cls.model_validate(data)
