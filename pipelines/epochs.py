"""Retrieval-split metrics of every epoch of a run, from its saved training checkpoints.

For convergence studies only (`evaluate.per_epoch`): training selects its model on
validation data, and these numbers are measured after the fact, never fed back. The training
loop reports a checkpoint every epoch; Ray Train keeps them all when the run was trained with
`evaluate.per_epoch: true` (otherwise its last two, and only those are measured). Each
checkpoint's model weights go into the run's own model (rebuilt from its bundle), which embeds
the retrieval split through the one embedding path and is scored by the evaluator. Metrics
are logged to the run's MLflow run as `<split>_R_at_1` / `<split>_mAP` at step = epoch, the
step of the per-epoch validation metrics and of `train_seconds`.
"""

from __future__ import annotations

import io
import posixpath

import torch

from components import constants as C
from components.data.versions import open_version, retrieval_split
from components.evaluation.model_eval import role_masks
from components.evaluation.retrieval import evaluate_retrieval
from components.inference import embed_split, load_bundle, model_from_bundle
from components.storage import Store
from components.tracking import RunLogger
from components.training.loop import CHECKPOINT_FILE


def epoch_checkpoints(store: Store, folder: str) -> dict[int, str]:
    """epoch -> relative path of each training checkpoint under `folder` (a run's Ray Train
    folder); a resumed run's later copy of an epoch wins (paths sort by Ray's timestamps)."""
    found: dict[int, str] = {}
    for path in store.list(folder, recursive=True):
        if posixpath.basename(path) != CHECKPOINT_FILE:
            continue
        state = _load(store, path)["state"]
        found[int(state["epoch"])] = path
    return dict(sorted(found.items()))


def _load(store: Store, path: str) -> dict:
    # Our own checkpoints (optimizer state holds plain Python values): no untrusted pickles.
    return torch.load(io.BytesIO(store.read_bytes(path)), map_location="cpu", weights_only=False)


def evaluate_epochs(store: Store, folder: str, manifest_uri: str, model_uri: str, ks: tuple[int, ...],
                    batch_size: int = 256) -> dict[int, dict[str, float]]:
    """epoch -> {`<split>_mAP`, `<split>_R@1`} of the embedding layer on the retrieval split."""
    version = open_version(manifest_uri)
    split = retrieval_split(version.manifest)
    model = model_from_bundle(load_bundle(model_uri))
    measured = {}
    for epoch, path in epoch_checkpoints(store, folder).items():
        model.load_state_dict(_load(store, path)["model"])
        embedded = embed_split(model, version, split, ("embedding",), batch_size)
        query, gallery = role_masks(embedded.roles)
        result = evaluate_retrieval(embedded.features["embedding"], embedded.labels, ks, query_mask=query,
                                    gallery_mask=gallery)
        measured[epoch] = {f"{split}_{C.METRIC_MAP}": result.metrics[C.METRIC_MAP],
                           f"{split}_{C.recall_at(1)}": result.metrics[C.recall_at(1)]}
    return measured


def log_epochs(tracking_uri: str, run_id: str, measured: dict[int, dict[str, float]]) -> None:
    logger = RunLogger(tracking_uri, run_id)
    for epoch, metrics in measured.items():
        logger.log_metrics(metrics, step=epoch)
