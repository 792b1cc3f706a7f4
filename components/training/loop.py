"""The training loop: `train(job, reporter)`, run identically by Ray Train workers and by one
plain process (the lent GPU machine has no Ray).

`train_loop_per_worker(config)` is what the driver (`pipelines/train.py`) hands TorchTrainer:
it parses the config into a `TrainJob` and runs `train` with a `RayReporter` (metrics and
checkpoints through `ray.train.report`, resume from `ray.train.get_checkpoint`). A plain
process calls `train(job)` with a `LocalReporter`, which keeps checkpoints in a folder of the
store; under `torchrun` the same code runs DDP. Nothing here imports Ray unless a
`RayReporter` is used.

Per epoch: exact P×K batches over the seen-class training split, streamed from the shards
(`components.training.data`: each worker its slice of the global batch, decoded and
augmented in loader processes ahead of the step), then on rank 0 validation mAP and R@1 on
the seen-class validation split (streamed through `components.inference`, never unseen
classes), a checkpoint, and the best model by validation mAP written as a bundle. A
restarted run resumes from the last checkpoint and sees the same batches it would have seen.

Mid-epoch checkpoints (`train.checkpoint_every_steps`): every N steps (counted over the run)
the loop also reports a checkpoint holding model, loss (proxies), optimizer, scheduler, the
sampler's state after the last *trained* step (the loader prefetches ahead of the step, so
the step number comes from the batch, not from the sampler) and the epoch's running means.
There is no AMP scaler: bfloat16 autocast needs none. No RNG state is saved because none is
needed: the batches are a function of (seed, epoch), the augmentation of (seed, rank, epoch,
step), and torch's global RNG is reseeded before every step from (seed, epoch, step)
(`components.training.data`). So a run resumed mid-epoch trains on exactly the remaining
batches of an uninterrupted run, pixel for pixel. Such a report carries only step counters
(`global_step`, `epoch_in_progress`, `step_in_epoch`), never `epoch` or train/val metrics,
and is not logged to MLflow: what selects on per-epoch metrics (the best bundle, MLflow's
per-epoch series, the driver's last result) never sees one. Under Ray Train its file is
`STEP_CHECKPOINT_FILE`, so what lists a run's per-epoch checkpoints (`pipelines/epochs.py`,
by `CHECKPOINT_FILE`) skips it; a plain process keeps only its newest checkpoint either way.

The loop never asks a loss its name: `label_kind` says whether it trains on class or
continuous labels, `needs_superclasses` whether it wants the dataset's superclasses, and
`diagnostics()` (when a loss has it) is averaged per epoch into the metrics as `train_<name>`.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist

from components import constants as C
from components.data.sample_index import load_sample_index
from components.data.versions import open_version
from components.evaluation import classification_accuracy, retrieval_metrics
from components.inference import embed_split, load_bundle, make_bundle, model_from_bundle, save_bundle
from components.losses import build_loss, loss_class, transfer_classifier
from components.losses import loss_arguments as losses_loss_arguments
from components.losses.base import CONTINUOUS_LABELS
from components.models import build_model
from components.storage import Store
from components.training.config import LossSpec, TrainConfig, TrainJob
from components.training.data import build_train_loader, step_seed
from components.training.label_sampler import LabelNeighbourBatchSampler
from components.training.module import TrainModule
from components.training.optim import build_optimizer, build_scheduler
from components.training.sampler import PKBatchSampler
from components.training.sync_bn import convert_batchnorm

CHECKPOINT_FILE = "checkpoint.pt"            # a checkpoint at an epoch's end
STEP_CHECKPOINT_FILE = "step_checkpoint.pt"  # a mid-epoch one (train.checkpoint_every_steps)
FAILED_MARKER = ".injected_failure_done"


# --- reporting: where metrics and checkpoints go ---------------------------------------------

class Reporter(Protocol):
    def device(self, config: TrainConfig) -> torch.device: ...
    def load_checkpoint(self) -> dict | None: ...
    def report(self, metrics: dict[str, Any], checkpoint: dict | None) -> None: ...


def _local_device(config: TrainConfig) -> torch.device:
    if config.use_gpu is not False and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


class LocalReporter:
    """One plain process (or torchrun): the newest checkpoint (epoch end or mid-epoch) in
    `<folder>/checkpoint.pt` on the store, metrics kept in `history` (and passed to `on_report`
    when given, after the checkpoint is written)."""

    def __init__(self, folder_uri: str, on_report=None):
        self.store, self.on_report = Store(folder_uri), on_report
        self.history: list[dict[str, Any]] = []

    def device(self, config: TrainConfig) -> torch.device:
        return _local_device(config)

    def load_checkpoint(self) -> dict | None:
        if not self.store.exists(CHECKPOINT_FILE):
            return None
        return torch.load(io.BytesIO(self.store.read_bytes(CHECKPOINT_FILE)), map_location="cpu", weights_only=False)

    def report(self, metrics: dict[str, Any], checkpoint: dict | None) -> None:
        if checkpoint is not None:
            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)
            self.store.write_bytes(CHECKPOINT_FILE, buffer.getvalue())
        self.history.append(dict(metrics))
        if self.on_report:
            self.on_report(metrics)


class RayReporter:
    """A Ray Train worker: `ray.train.report` with a checkpoint folder, `get_checkpoint` to resume."""

    def device(self, config: TrainConfig) -> torch.device:
        import ray.train.torch

        if _distributed()[1] > 1 or torch.cuda.is_available():
            return ray.train.torch.get_device()
        return torch.device("cpu")

    def load_checkpoint(self) -> dict | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if not checkpoint:
            return None
        with checkpoint.as_directory() as folder:
            for name in (CHECKPOINT_FILE, STEP_CHECKPOINT_FILE):
                if os.path.exists(os.path.join(folder, name)):
                    return torch.load(os.path.join(folder, name), map_location="cpu", weights_only=False)
        raise FileNotFoundError(f"Ray Train checkpoint {checkpoint.path} holds neither {CHECKPOINT_FILE} nor"
                                f" {STEP_CHECKPOINT_FILE}: it was not written by this training loop")

    def report(self, metrics: dict[str, Any], checkpoint: dict | None) -> None:
        import ray.train

        if checkpoint is None:
            ray.train.report(metrics)
            return
        name = STEP_CHECKPOINT_FILE if checkpoint.get("mid_epoch") else CHECKPOINT_FILE
        with tempfile.TemporaryDirectory() as folder:
            torch.save(checkpoint, os.path.join(folder, name))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: `TrainJob.to_dict()` (or the driver's older loop dict) in."""
    train(TrainJob.from_dict(config), RayReporter())


# --- what the loss needs ---------------------------------------------------------------------

def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def needs_superclasses(name: str) -> bool:
    """Whether a loss wants the dataset's superclasses (its `needs_superclasses` flag)."""
    return loss_class(name).needs_superclasses


def loss_arguments(loss_cfg: LossSpec | dict, num_classes: int, embedding_dim: int,
                   superclass_of: list[int] | None) -> dict:
    """The loss's constructor arguments: its config plus what the data gives (the losses'
    own rule, `components.losses.loss_arguments`; the driver builds the loss the same way)."""
    spec = loss_cfg if isinstance(loss_cfg, LossSpec) else LossSpec(**loss_cfg)
    return losses_loss_arguments(spec.name, spec.params, num_classes=num_classes,
                                 embedding_dim=embedding_dim, superclass_of=superclass_of)


def superclass_indices(manifest: dict, classes: list[str]) -> list[int] | None:
    mapping = manifest.get("superclasses") or {}
    if not classes or any(name not in mapping for name in classes):
        return None
    names = sorted(set(mapping[name] for name in classes))
    return [names.index(mapping[name]) for name in classes]


def attribute_labels(metas: list[dict], names: list[str] | None) -> np.ndarray:
    """Continuous labels (e.g. the log-ratio loss) from the samples' attributes."""
    if not names and metas:
        names = sorted(metas[0].get(C.ATTRIBUTES) or {})
    if not names:
        raise ValueError("this loss needs continuous labels: the dataset's samples have no attributes "
                         "(set loss.attributes, e.g. [length_m, width_m], on a source that provides them)")
    try:
        return np.array([[float(m[C.ATTRIBUTES][n]) for n in names] for m in metas], dtype=np.float32)
    except KeyError as exc:
        available = sorted(metas[0][C.ATTRIBUTES])
        raise ValueError(f"loss.attributes names {exc} but a sample lacks it; available: {available}") from None


def build_sampler(labels: np.ndarray, continuous: np.ndarray | None, config: TrainConfig, rank: int, world: int):
    """P×K batches over class labels; for continuous-label losses the log-ratio paper's dense
    batches (anchors and their nearest neighbours in label space; same interface)."""
    if continuous is not None:
        return LabelNeighbourBatchSampler(continuous, config.classes_per_batch * config.images_per_class,
                                          config.images_per_class, rank=rank, world_size=world, seed=config.seed,
                                          batches_per_epoch=config.batches_per_epoch)
    return PKBatchSampler(labels, config.classes_per_batch, config.images_per_class, rank=rank, world_size=world,
                          seed=config.seed, batches_per_epoch=config.batches_per_epoch)


def init_from_bundle(model, loss, uri: str) -> None:
    """Fine-tuning: start from another run's model (and its classifier, for WARP from CE)."""
    bundle = load_bundle(uri)
    model.load_state_dict(bundle["model_state"])
    if hasattr(loss, "logits") and bundle["loss_state"]:
        source = build_loss(bundle["loss_name"], **bundle["loss_params"])
        source.load_state_dict(bundle["loss_state"])
        transfer_classifier(source, loss)


def validate(model, loss, version, config: TrainConfig, device) -> dict[str, float]:
    """Retrieval (and classifier accuracy) on the seen-class validation split, streamed."""
    if version.num_samples(C.SPLIT_VAL) < 2:
        return {}
    val = embed_split(model, version, C.SPLIT_VAL, ("embedding",), batch_size=config.eval_batch_size, device=device,
                      loader_workers=min(config.loader_workers, 1), with_metadata=False)
    embeddings, labels = val.features["embedding"], val.label_indices
    metrics = retrieval_metrics(embeddings, labels, ks=(1,))
    result = {f"val_{C.METRIC_MAP}": metrics[C.METRIC_MAP], f"val_{C.recall_at(1)}": metrics[C.recall_at(1)]}
    if hasattr(loss, "logits"):
        with torch.no_grad():
            logits = loss.logits(torch.from_numpy(embeddings).to(device)).cpu()
        result[f"val_{C.METRIC_ACCURACY}"] = classification_accuracy(logits, labels)
    return result


# --- the loop --------------------------------------------------------------------------------

# Called after every optimizer step with (epoch, step in epoch, this rank's positions, the
# images the step trained on): an observer, e.g. for tests comparing two runs' batches.
StepHook = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def train(job: TrainJob, reporter: Reporter | None = None, on_step: StepHook | None = None) -> dict[str, Any]:
    """Train one run; returns rank 0's last metrics (each rank its own)."""
    cfg = job.train
    reporter = reporter or LocalReporter(job.checkpoint_uri or f"{job.output_uri.rstrip('/')}/checkpoints")
    rank, world = _distributed()
    device = reporter.device(cfg)
    # Ray limits a worker to one thread per reserved CPU; the config decides instead.
    torch.set_num_threads(cfg.compute_threads())
    torch.manual_seed(cfg.seed)

    version = open_version(job.dataset)
    cls = loss_class(job.loss.name)
    continuous_kind = cls.label_kind == CONTINUOUS_LABELS
    index = load_sample_index(version, C.SPLIT_TRAIN, metas=continuous_kind)
    classes = index.classes
    image = version.manifest["image"]
    model = build_model(**job.model, in_channels=image["channels"], image_size=image["size"] or 32)
    superclasses = superclass_indices(version.manifest, classes) if needs_superclasses(job.loss.name) else None
    params = loss_arguments(job.loss, len(classes), model.embedding_dim, superclasses)
    loss = build_loss(job.loss.name, **params)
    continuous = attribute_labels(index.metas or [], job.loss.attributes) if continuous_kind else None
    index.metas = None   # only the labels were needed: free the parsed metadata
    labels = torch.from_numpy(continuous if continuous is not None else index.labels)
    if cfg.init_from:
        init_from_bundle(model, loss, cfg.init_from)
    if cfg.freeze_backbone:
        model.backbone.requires_grad_(False)

    use_amp = cfg.amp and (device.type == "cuda" or cfg.amp_cpu)
    # On the CPU, oneDNN's bfloat16 convolutions want channels_last (see TrainConfig.amp_cpu).
    layout = torch.channels_last if use_amp and device.type == "cpu" else torch.contiguous_format
    module = TrainModule(model, loss, autocast_dtype=torch.bfloat16 if use_amp else None).to(device)
    module.model.to(memory_format=layout)
    if world > 1:
        module = convert_batchnorm(module, device)
        module = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.freeze_backbone)
    inner = module.module if world > 1 else module
    sampler = build_sampler(index.labels, continuous, cfg, rank, world)
    loader, _, device_augment = build_train_loader(version.store.uri, index, sampler, cfg, rank, device)
    optimizer = build_optimizer(inner.model, inner.loss, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.loss_lr_multiplier)
    steps_per_epoch = len(sampler)
    scheduler = build_scheduler(optimizer, cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch))

    state: dict[str, Any] = {"epoch": 0, "best": -1.0, "train_seconds": 0.0, "resumed_from": None,
                             "resumed_from_step": None}
    sampler.set_epoch(0)
    progress: EpochProgress | None = None
    saved = reporter.load_checkpoint()
    if saved:
        inner.model.load_state_dict(saved["model"])
        inner.loss.load_state_dict(saved["loss"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        # Checkpoints from before mid-epoch resume have no sampler state: they are epoch ends.
        sampler.load_state_dict(saved.get("sampler") or {"epoch": saved["state"]["epoch"], "start_batch": 0})
        progress = EpochProgress(**saved["epoch_progress"]) if saved.get("epoch_progress") else None
        state = {**saved["state"], "resumed_from": saved["state"]["epoch"],
                 "resumed_from_step": sampler.epoch * steps_per_epoch + sampler.start_batch}

    logger = _Rank0Logger(job, rank)
    metrics: dict[str, Any] = {}
    every = cfg.checkpoint_every_steps
    for epoch in range(sampler.epoch, cfg.epochs):
        if epoch != sampler.epoch:
            sampler.set_epoch(epoch)
        progress = progress or EpochProgress()
        started = time.time()
        module.train()
        for batch in loader:
            step = int(batch["step"])
            torch.manual_seed(step_seed(cfg.seed, epoch, step))   # a loss's own draws (see module doc)
            images = batch["images"].to(device, non_blocking=True)
            if device_augment is not None:
                images = device_augment(images, batch["epoch"], step)
            images = images.contiguous(memory_format=layout)
            value = module(images, labels[batch["positions"]].to(device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            scheduler.step()
            progress.add(value.item(), len(batch["positions"]), _diagnostics(inner.loss))
            if on_step is not None:
                on_step(epoch, step, batch["positions"], images)
            global_step = epoch * steps_per_epoch + step + 1
            if every and global_step % every == 0 and step + 1 < steps_per_epoch:   # the epoch's end reports anyway
                progress.seconds += time.time() - started
                started = time.time()
                checkpoint = None
                if rank == 0:
                    checkpoint = {**_checkpoint(inner, optimizer, scheduler, state),
                                  "sampler": sampler.state_dict(batches_done=step + 1),
                                  "epoch_progress": progress.to_dict(), "mid_epoch": True}
                reporter.report({"global_step": global_step, "epoch_in_progress": epoch, "step_in_epoch": step + 1},
                                checkpoint)
            _maybe_inject_failure(job, epoch, rank, world)   # after the step's checkpoint, if it has one
        seconds = progress.seconds + time.time() - started
        state["train_seconds"] += seconds
        state["epoch"] = epoch + 1

        metrics = {"epoch": epoch + 1, "train_loss": progress.mean_loss(),
                   "train_seconds": state["train_seconds"],
                   "train_images_per_second": progress.images * world / max(seconds, 1e-9),
                   "resumed_from_epoch": -1 if state["resumed_from"] is None else state["resumed_from"],
                   "resumed_from_step": -1 if state.get("resumed_from_step") is None else state["resumed_from_step"],
                   **{f"train_{name}": float(np.mean(values)) for name, values in progress.diagnostics.items()}}
        progress = None
        checkpoint = None
        if rank == 0:
            metrics.update(validate(inner.model, inner.loss, version, cfg, device))
            score = metrics.get(f"val_{C.METRIC_MAP}", -metrics["train_loss"])
            metrics["is_best"] = float(score > state["best"])
            if score > state["best"]:
                state["best"] = score
                save_bundle(make_bundle(inner.model, inner.loss, job.loss.name, params, classes, job.dataset,
                                        metrics, epoch + 1), job.output_uri)
            metrics["best_val_mAP"] = state["best"]
            logger.log_metrics(metrics, step=epoch + 1)
            checkpoint = {**_checkpoint(inner, optimizer, scheduler, state), "sampler": sampler.state_dict(steps_per_epoch)}
        reporter.report(metrics, checkpoint)

    del loader   # ends the persistent loader processes now, not at garbage collection
    if rank == 0:
        logger.finish(job.output_uri)
    return metrics


@dataclass
class EpochProgress:
    """The running means of the epoch in progress, kept in a mid-epoch checkpoint so that a
    resumed epoch reports the means an uninterrupted one would (over all of its steps)."""

    losses: list[float] = field(default_factory=list)
    diagnostics: dict[str, list[float]] = field(default_factory=dict)
    images: int = 0
    seconds: float = 0.0

    def add(self, loss: float, images: int, diagnostics: dict[str, float] | None) -> None:
        self.losses.append(loss)
        self.images += images
        for name, number in (diagnostics or {}).items():
            self.diagnostics.setdefault(name, []).append(float(number))

    def mean_loss(self) -> float:
        return float(np.mean(self.losses)) if self.losses else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "diagnostics": {k: list(v) for k, v in self.diagnostics.items()},
                "images": self.images, "seconds": self.seconds}


def _checkpoint(inner, optimizer, scheduler, state: dict[str, Any]) -> dict[str, Any]:
    return {"model": inner.model.state_dict(), "loss": inner.loss.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "state": dict(state)}


def _diagnostics(loss) -> dict[str, float] | None:
    method = getattr(loss, "diagnostics", None)
    return method() if callable(method) else None


def _maybe_inject_failure(job: TrainJob, epoch: int, rank: int, world: int) -> None:
    """Test hook: kill one worker process once, at the first step of epoch `train.fail_at_epoch`
    (0-based), after that step's mid-epoch checkpoint when it has one."""
    fail_at = job.train.fail_at_epoch
    if fail_at is None or epoch != fail_at or rank != world - 1:
        return
    store = Store(job.output_uri)
    if store.exists(FAILED_MARKER):
        return
    store.write_bytes(FAILED_MARKER, b"1")
    os._exit(1)


class _Rank0Logger:
    """MLflow logging from rank 0 (no-op on other ranks, and when the run has no tracking settings)."""

    def __init__(self, job: TrainJob, rank: int):
        self.logger = None
        if rank == 0 and job.tracking.run_id:
            from components.tracking import RunLogger

            self.logger = RunLogger(job.tracking.uri, job.tracking.run_id)

    def log_metrics(self, metrics: dict, step: int) -> None:
        if self.logger:
            self.logger.log_metrics(metrics, step=step)

    def finish(self, output_uri: str) -> None:
        if self.logger:
            self.logger.log_torch_model(model_from_bundle(load_bundle(output_uri)))
