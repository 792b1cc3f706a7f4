"""What a trained model is on disk: one `model.pt` bundle, enough to rebuild and use it.

A bundle holds the `build_model` arguments and weights, the loss (name, parameters and
state: proxies, classifier weights), the class names, the dataset version it was trained
on, and its validation metrics. Evaluate, index and search load models from bundles; the
WARP fine-tuning run starts from the cross-entropy run's bundle.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from components.storage import Store

BUNDLE_FILENAME = "model.pt"
BUNDLE_FORMAT = 1


def make_bundle(model, loss, loss_name: str, loss_params: dict, classes: list[str], dataset_uri: str,
                metrics: dict[str, float], epoch: int) -> dict[str, Any]:
    return {
        "format": BUNDLE_FORMAT,
        "model_config": dict(model.config),
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "loss_name": loss_name,
        "loss_params": dict(loss_params),
        "loss_state": {k: v.detach().cpu() for k, v in loss.state_dict().items()},
        "classes": list(classes),
        "dataset": dataset_uri,
        "metrics": dict(metrics),
        "epoch": epoch,
    }


def save_bundle(bundle: dict[str, Any], uri: str) -> None:
    """Write a bundle atomically to `uri` (a folder: local path or s3://, gs://...)."""
    buffer = io.BytesIO()
    torch.save(bundle, buffer)
    Store(uri).write_bytes(BUNDLE_FILENAME, buffer.getvalue())


def load_bundle(uri: str) -> dict[str, Any]:
    """Read a bundle from its folder URI, or from the URI of the `model.pt` file itself."""
    uri = uri.rstrip("/")
    folder = uri[: -len(BUNDLE_FILENAME) - 1] if uri.endswith("/" + BUNDLE_FILENAME) else uri
    store = Store(folder)
    if not store.exists(BUNDLE_FILENAME):
        raise FileNotFoundError(f"no trained model at {folder} (expected {BUNDLE_FILENAME} there)")
    bundle = torch.load(io.BytesIO(store.read_bytes(BUNDLE_FILENAME)), map_location="cpu", weights_only=False)
    if bundle.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{folder}/{BUNDLE_FILENAME} has bundle format {bundle.get('format')!r}, expected {BUNDLE_FORMAT}")
    return bundle


def model_from_bundle(bundle: dict[str, Any]):
    """The bundle's model with its weights, in eval mode, on the CPU."""
    from components.models import build_model

    model = build_model(**bundle["model_config"])
    model.load_state_dict(bundle["model_state"])
    return model.eval()


def loss_from_bundle(bundle: dict[str, Any]):
    """The bundle's loss with its state (proxies, classifier weights), in eval mode."""
    from components.losses import build_loss

    loss = build_loss(bundle["loss_name"], **bundle["loss_params"])
    loss.load_state_dict(bundle["loss_state"])
    return loss.eval()


def load_model(uri: str):
    """`model_from_bundle(load_bundle(uri))`."""
    return model_from_bundle(load_bundle(uri))
