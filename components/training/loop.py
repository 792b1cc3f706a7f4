"""`train_loop_per_worker(config)`: what every Ray Train worker runs.

The driver (`pipelines/train.py`) only builds ScalingConfig / RunConfig / TorchTrainer; all
training happens here, identically on 1 or N workers, CPU (gloo) or GPU (NCCL, AMP).

Per epoch: P×K batches over the seen-class training split (each worker its slice of the
global batch), then validation mAP and R@1 on the seen-class validation split (never on
unseen classes), a checkpoint for fault tolerance, and the best model by validation mAP
written as a bundle. A restarted worker group resumes from the last checkpoint.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from components import constants as C
from components.data.reader import load_split
from components.data.versions import open_version
from components.evaluation import classification_accuracy, retrieval_metrics
from components.losses import build_loss, loss_class, transfer_classifier
from components.models import build_model
from components.models.transforms import build_eval_transform, build_train_transform
from components.storage import Store
from components.training.checkpoint import load_bundle, make_bundle, save_bundle
from components.training.module import TrainModule
from components.training.optim import build_optimizer, build_scheduler
from components.training.sampler import PKBatchSampler
from components.training.sync_bn import convert_batchnorm

CHECKPOINT_FILE = "checkpoint.pt"
FAILED_MARKER = ".injected_failure_done"


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def loss_arguments(loss_cfg: dict, num_classes: int, embedding_dim: int, superclass_of: list[int] | None) -> dict:
    params = dict(loss_cfg.get("params") or {})
    cls = loss_class(loss_cfg["name"])
    if getattr(cls, "has_parameters", False):
        params.update(num_classes=num_classes, embedding_dim=embedding_dim)
    # Hierarchical proxies: the dataset's superclasses when it has them and none are configured.
    if loss_cfg["name"] == "hierarchical_proxy" and superclass_of and not ({"superclass_of", "num_coarse"} & set(params)):
        params["superclass_of"] = superclass_of
    return params


def superclass_indices(manifest: dict, classes: list[str]) -> list[int] | None:
    mapping = manifest.get("superclasses") or {}
    if not classes or any(name not in mapping for name in classes):
        return None
    names = sorted(set(mapping[name] for name in classes))
    return [names.index(mapping[name]) for name in classes]


def attribute_labels(metas: list[dict], names: list[str] | None) -> np.ndarray:
    """Continuous labels (log-ratio loss) from the samples' attributes."""
    if not names and metas:
        names = sorted(metas[0][C.ATTRIBUTES])
    if not names:
        raise ValueError("loss log_ratio needs continuous labels: the dataset's samples have no attributes "
                         "(set loss.attributes, e.g. [length_m, width_m], on a source that provides them)")
    try:
        return np.array([[float(m[C.ATTRIBUTES][n]) for n in names] for m in metas], dtype=np.float32)
    except KeyError as exc:
        raise ValueError(f"loss.attributes names {exc} but a sample lacks it; available: {sorted(metas[0][C.ATTRIBUTES])}") from None


@torch.no_grad()
def embed(model, images: np.ndarray, transform, device, batch_size: int = 512, taps=("embedding",)) -> dict[str, torch.Tensor]:
    model.eval()
    outputs: dict[str, list[torch.Tensor]] = {tap: [] for tap in taps}
    for start in range(0, len(images), batch_size):
        batch = transform(torch.from_numpy(_nchw(images[start:start + batch_size]))).to(device)
        for tap, value in model.extract(batch, taps=taps).items():
            outputs[tap].append(value.float().cpu())
    return {tap: torch.cat(values) if values else torch.zeros(0) for tap, values in outputs.items()}


def _nchw(images: np.ndarray) -> np.ndarray:
    return images[:, None] if images.ndim == 3 else np.moveaxis(images, -1, 1)


def validate(model, loss, val, transform, device) -> dict[str, float]:
    if len(val.labels) < 2:
        return {}
    embeddings = embed(model, val.images, transform, device)["embedding"]
    metrics = retrieval_metrics(embeddings, val.labels, ks=(1,))
    result = {f"val_{C.METRIC_MAP}": metrics[C.METRIC_MAP], f"val_{C.recall_at(1)}": metrics[C.recall_at(1)]}
    if hasattr(loss, "logits"):
        with torch.no_grad():
            logits = loss.logits(embeddings.to(device)).cpu()
        result[f"val_{C.METRIC_ACCURACY}"] = classification_accuracy(logits, val.labels)
    return result


def init_from_bundle(model, loss, loss_name: str, uri: str) -> None:
    """Fine-tuning: start from another run's model (and its classifier, for WARP from CE)."""
    bundle = load_bundle(uri)
    model.load_state_dict(bundle["model_state"])
    if hasattr(loss, "logits") and bundle["loss_state"]:
        source = build_loss(bundle["loss_name"], **bundle["loss_params"])
        source.load_state_dict(bundle["loss_state"])
        transfer_classifier(source, loss)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train

    rank, world = _distributed()
    train_cfg, model_cfg, loss_cfg = config["train"], config["model"], config["loss"]
    device = ray.train.torch.get_device() if world > 1 or torch.cuda.is_available() else torch.device("cpu")
    torch.manual_seed(train_cfg["seed"])
    if device.type == "cpu" and config.get("threads_per_worker"):
        torch.set_num_threads(config["threads_per_worker"])

    version = open_version(config["dataset"])
    train = load_split(version, C.SPLIT_TRAIN)
    val = load_split(version, C.SPLIT_VAL) if rank == 0 else None
    image = version.manifest["image"]
    model = build_model(**model_cfg, in_channels=image["channels"], image_size=image["size"] or 32)
    superclasses = superclass_indices(version.manifest, train.classes)
    loss_params = loss_arguments(loss_cfg, len(train.classes), model.embedding_dim, superclasses)
    loss = build_loss(loss_cfg["name"], **loss_params)
    labels = (torch.from_numpy(attribute_labels(train.metas, loss_cfg.get("attributes")))
              if loss_cfg["name"] == "log_ratio" else torch.from_numpy(train.labels))
    if train_cfg.get("init_from"):
        init_from_bundle(model, loss, loss_cfg["name"], train_cfg["init_from"])
    if train_cfg.get("freeze_backbone"):
        model.backbone.requires_grad_(False)

    module = TrainModule(model, loss).to(device)
    if world > 1:
        module = convert_batchnorm(module, device)
        module = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(train_cfg.get("freeze_backbone")))
    inner = module.module if world > 1 else module
    sampler = PKBatchSampler(train.labels, train_cfg["classes_per_batch"], train_cfg["images_per_class"],
                             rank=rank, world_size=world, seed=train_cfg["seed"],
                             batches_per_epoch=train_cfg.get("batches_per_epoch"))
    optimizer = build_optimizer(inner.model, inner.loss, train_cfg["optimizer"], train_cfg["lr"],
                                train_cfg["weight_decay"], train_cfg["loss_lr_multiplier"])
    total_steps = train_cfg["epochs"] * len(sampler)
    scheduler = build_scheduler(optimizer, total_steps, int(train_cfg["warmup_epochs"] * len(sampler)))
    augment = build_train_transform(rotation=train_cfg["rotation"]) if train_cfg["augment"] else build_eval_transform()
    evaluate_transform = build_eval_transform()
    use_amp = device.type == "cuda" and train_cfg.get("amp", True)

    state = {"epoch": 0, "best": -1.0, "train_seconds": 0.0, "resumed_from": None}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            saved = torch.load(os.path.join(folder, CHECKPOINT_FILE), map_location="cpu", weights_only=False)
        inner.model.load_state_dict(saved["model"])
        inner.loss.load_state_dict(saved["loss"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = {**saved["state"], "resumed_from": saved["state"]["epoch"]}

    logger = _Rank0Logger(config) if rank == 0 else None
    for epoch in range(state["epoch"], train_cfg["epochs"]):
        started = time.time()
        module.train()
        sampler.set_epoch(epoch)
        losses = []
        for indices in sampler:
            images = augment(torch.from_numpy(_nchw(train.images[indices]))).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                value = module(images, labels[indices].to(device))
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            scheduler.step()
            losses.append(value.item())
            _maybe_inject_failure(config, epoch, rank, world)
        state["train_seconds"] += time.time() - started
        state["epoch"] = epoch + 1

        metrics = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "train_seconds": state["train_seconds"],
                   "resumed_from_epoch": -1 if state["resumed_from"] is None else state["resumed_from"]}
        if rank == 0:
            metrics.update(validate(inner.model, inner.loss, val, evaluate_transform, device))
            score = metrics.get(f"val_{C.METRIC_MAP}", -metrics["train_loss"])
            metrics["is_best"] = float(score > state["best"])
            if score > state["best"]:
                state["best"] = score
                save_bundle(make_bundle(inner.model, inner.loss, loss_cfg["name"], loss_params, train.classes,
                                        config["dataset"], metrics, epoch + 1), config["output_uri"])
            metrics["best_val_mAP"] = state["best"]
            logger.log_metrics(metrics, step=epoch + 1)
        _report(metrics, rank, inner, optimizer, scheduler, state)

    if rank == 0:
        logger.finish(config["output_uri"])


def _report(metrics, rank, inner, optimizer, scheduler, state) -> None:
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save({"model": inner.model.state_dict(), "loss": inner.loss.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "state": state}, os.path.join(folder, CHECKPOINT_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _maybe_inject_failure(config: dict, epoch: int, rank: int, world: int) -> None:
    """Test hook: kill one worker process once, during epoch `train.fail_at_epoch` (0-based)."""
    fail_at = config["train"].get("fail_at_epoch")
    if fail_at is None or epoch != fail_at or rank != world - 1:
        return
    store = Store(config["output_uri"])
    if store.exists(FAILED_MARKER):
        return
    store.write_bytes(FAILED_MARKER, b"1")
    os._exit(1)


class _Rank0Logger:
    """MLflow logging from rank 0 (no-op when the run has no tracking settings)."""

    def __init__(self, config: dict):
        from components.tracking import RunLogger

        tracking = config.get("tracking") or {}
        self.logger = RunLogger(tracking["uri"], tracking["run_id"]) if tracking.get("run_id") else None

    def log_metrics(self, metrics: dict, step: int) -> None:
        if self.logger:
            self.logger.log_metrics(metrics, step=step)

    def finish(self, output_uri: str) -> None:
        if not self.logger:
            return
        from components.training.checkpoint import model_from_bundle

        self.logger.log_torch_model(model_from_bundle(load_bundle(output_uri)))

