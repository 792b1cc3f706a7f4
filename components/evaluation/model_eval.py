"""Evaluate one trained model on a dataset version: retrieval on unseen classes, per feature
tap, plus classification accuracy on the seen-class validation images for classifier losses.

Unseen images carry query/gallery roles from the manifest (default: every image queries
all the others, leave-one-out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from components import constants as C
from components.evaluation.classification import classification_accuracy
from components.evaluation.retrieval import evaluate_retrieval
from components.index.embedding import EmbeddedSplit, embed_split
from components.losses import build_loss
from components.training.checkpoint import load_bundle


@dataclass
class ModelEvaluation:
    metrics: dict[str, dict[str, float]]                 # tap -> metric name -> value
    accuracy: float | None                               # classifier losses only
    pr_curves: dict[str, tuple[np.ndarray, np.ndarray]]  # tap -> (recall, precision)
    per_class_ap: dict[str, dict[str, float]]            # tap -> class -> AP
    unseen: EmbeddedSplit | None = field(default=None, repr=False)

    def flat_metrics(self, main_tap: str = "embedding") -> dict[str, float]:
        """One flat dict: the main tap's metrics unprefixed, the others as `<tap>.<metric>`."""
        flat: dict[str, float] = {}
        for tap, values in self.metrics.items():
            for name, value in values.items():
                flat[name if tap == main_tap else f"{tap}.{name}"] = value
        if self.accuracy is not None:
            flat[C.METRIC_ACCURACY] = self.accuracy
        return flat


def role_masks(roles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    query = np.isin(roles, [C.ROLE_BOTH, C.ROLE_QUERY])
    gallery = np.isin(roles, [C.ROLE_BOTH, C.ROLE_GALLERY])
    return query, gallery


def evaluate_model(manifest_uri: str, model_uri: str, taps=("embedding", "penultimate"), ks=C.DEFAULT_RECALL_KS,
                   batch_size: int = 256, num_actors: int = 1, use_gpu: bool = False, device=None) -> ModelEvaluation:
    unseen = embed_split(manifest_uri, C.SPLIT_UNSEEN, model_uri, tuple(taps), batch_size, num_actors, use_gpu)
    query, gallery = role_masks(unseen.roles)
    metrics, curves, per_class = {}, {}, {}
    for tap in taps:
        result = evaluate_retrieval(unseen.features[tap], unseen.labels, ks, query_mask=query, gallery_mask=gallery,
                                    device=device, return_per_class=True, return_pr_curve=True)
        metrics[tap] = dict(result.metrics)
        curves[tap] = (result.pr_recall, result.pr_precision)
        per_class[tap] = {str(k): float(v) for k, v in (result.per_class_ap or {}).items()}
    return ModelEvaluation(metrics, _val_accuracy(manifest_uri, model_uri, batch_size, num_actors, use_gpu),
                           curves, per_class, unseen)


def _val_accuracy(manifest_uri: str, model_uri: str, batch_size: int, num_actors: int, use_gpu: bool) -> float | None:
    """Accuracy of the loss's classifier on held-out images of the seen classes."""
    bundle = load_bundle(model_uri)
    loss = build_loss(bundle["loss_name"], **bundle["loss_params"])
    if not hasattr(loss, "logits"):
        return None
    loss.load_state_dict(bundle["loss_state"])
    try:
        val = embed_split(manifest_uri, C.SPLIT_VAL, model_uri, ("embedding",), batch_size, num_actors, use_gpu)
    except ValueError:  # no validation images
        return None
    index = {name: i for i, name in enumerate(bundle["classes"])}
    labels = torch.tensor([index[label] for label in val.labels])
    with torch.no_grad():
        logits = loss.eval().logits(torch.from_numpy(val.features["embedding"]))
    return classification_accuracy(logits, labels)
