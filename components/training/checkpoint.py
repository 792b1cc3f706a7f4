"""Model bundles, as training writes them: the format lives in `components.inference.bundle`
(evaluation, index and search read bundles without importing training); these names are
kept here so existing imports keep working."""

from components.inference.bundle import (
    BUNDLE_FILENAME,
    BUNDLE_FORMAT,
    load_bundle,
    loss_from_bundle,
    make_bundle,
    model_from_bundle,
    save_bundle,
)

__all__ = ["BUNDLE_FILENAME", "BUNDLE_FORMAT", "load_bundle", "loss_from_bundle", "make_bundle",
           "model_from_bundle", "save_bundle"]
