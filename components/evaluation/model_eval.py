"""Evaluate one trained model on a dataset version: retrieval on unseen classes, per feature
tap, plus classification accuracy on the seen-class validation images for classifier losses,
retrieval at the superclass level (``coarse_mAP``, ``coarse_R@1``) where every item has one,
and, where every item carries continuous attributes, how well embedding distance ranks
attribute distance (Spearman ρ, nDCG@10: `components.evaluation.attributes`).

Unseen images carry query/gallery roles from the manifest (default: every image queries
all the others, leave-one-out). Embedding goes through `components.inference` (one process,
streamed over the sample index, `num_actors` - 1 decoding processes ahead of the model), the
same path training validation uses; no Ray worker pool is started for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from components import constants as C
from components.data.versions import open_version, retrieval_split
from components.evaluation.attributes import attribute_ranking_metrics
from components.evaluation.classification import classification_accuracy
from components.evaluation.retrieval import evaluate_retrieval
from components.inference import EmbeddedSplit, embed_split, load_bundle, loss_from_bundle, model_from_bundle


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


def _device(use_gpu: bool, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


def evaluate_model(manifest_uri: str, model_uri: str, taps=("embedding", "penultimate"), ks=C.DEFAULT_RECALL_KS,
                   batch_size: int = 256, num_actors: int = 1, use_gpu: bool = False, device=None,
                   split: str | None = None) -> ModelEvaluation:
    """Retrieval on `split` (default: the retrieval split of the version's protocol: unseen
    classes, or the held-out test images of the images protocol)."""
    version = open_version(manifest_uri)
    split = split or retrieval_split(version.manifest)
    bundle = load_bundle(model_uri)
    target = _device(use_gpu, device)   # the model's device; retrieval is scored there too
    model = model_from_bundle(bundle).to(target)
    readers = max(0, int(num_actors) - 1)
    unseen = embed_split(model, version, split, tuple(taps), batch_size, loader_workers=readers)
    query, gallery = role_masks(unseen.roles)
    metrics, curves, per_class = {}, {}, {}
    attributes = attribute_matrix(unseen.metas)   # parsed once, ranked per tap
    coarse = superclass_labels(unseen.metas)
    for tap in taps:
        result = evaluate_retrieval(unseen.features[tap], unseen.labels, ks, query_mask=query, gallery_mask=gallery,
                                    device=target, return_per_class=True, return_pr_curve=True)
        metrics[tap] = dict(result.metrics)
        assert result.pr_recall is not None and result.pr_precision is not None  # return_pr_curve=True
        curves[tap] = (result.pr_recall, result.pr_precision)
        per_class[tap] = {str(k): float(v) for k, v in (result.per_class_ap or {}).items()}
        if attributes is not None:
            metrics[tap].update(attribute_ranking_metrics(unseen.features[tap], attributes))
        if coarse is not None:
            metrics[tap].update(coarse_retrieval_metrics(unseen.features[tap], coarse, query, gallery, target))
    return ModelEvaluation(metrics, _val_accuracy(version, bundle, model, batch_size, readers), curves, per_class, unseen)


# Part of every evaluation record's key (the models' and the raw-pixel baseline's): raised when
# the evaluation measures more, so records made before are measured again rather than reused
# without the new figures. 2: attribute ranking on the baseline; 3: superclass-level retrieval.
METRICS_VERSION = 3

COARSE_PREFIX = "coarse_"   # metrics of retrieval at the superclass level: coarse_mAP, coarse_R@1


def superclass_labels(metas: list[dict[str, Any]]) -> np.ndarray | None:
    """Each item's superclass as an index, or None unless every item has one (and there are
    at least two): then retrieval is also scored at the superclass level."""
    names = [str(m.get(C.SUPERCLASS) or "") for m in metas]
    if not names or not all(names) or len(set(names)) < 2:
        return None
    index = {name: i for i, name in enumerate(sorted(set(names)))}
    return np.array([index[name] for name in names])


def coarse_retrieval_metrics(features: np.ndarray, superclasses: np.ndarray, query: np.ndarray, gallery: np.ndarray,
                             device=None) -> dict[str, float]:
    """mAP and R@1 with the superclass as the relevance (same vehicle type = relevant): the
    level a hierarchical loss aims at, beside the fine-grained figures."""
    result = evaluate_retrieval(features, superclasses, (1,), query_mask=query, gallery_mask=gallery, device=device)
    return {f"{COARSE_PREFIX}{C.METRIC_MAP}": result.metrics[C.METRIC_MAP],
            f"{COARSE_PREFIX}{C.recall_at(1)}": result.metrics[C.recall_at(1)]}


def attribute_matrix(metas: list[dict[str, Any]]) -> np.ndarray | None:
    """The items' continuous attributes as [N, A] (names sorted), or None unless every item
    has the same numeric ones (then the attribute ranking is measured beside retrieval)."""
    names = sorted((metas[0].get(C.ATTRIBUTES) or {}) if metas else {})
    if not names or any(sorted(m.get(C.ATTRIBUTES) or {}) != names for m in metas):
        return None
    try:
        return np.array([[float(m[C.ATTRIBUTES][n]) for n in names] for m in metas])
    except (TypeError, ValueError):
        return None


def _val_accuracy(version, bundle: dict[str, Any], model, batch_size: int, readers: int) -> float | None:
    """Accuracy of the loss's classifier on held-out images of the seen classes."""
    loss = loss_from_bundle(bundle)
    if not hasattr(loss, "logits") or version.num_samples(C.SPLIT_VAL) == 0:
        return None
    val = embed_split(model, version, C.SPLIT_VAL, ("embedding",), batch_size, loader_workers=readers, with_metadata=False)
    index = {name: i for i, name in enumerate(bundle["classes"])}
    labels = torch.tensor([index[label] for label in val.labels])
    with torch.no_grad():
        logits = loss.logits(torch.from_numpy(val.features["embedding"]))
    return classification_accuracy(logits, labels)
