"""Inference: model bundles → models → feature taps of in-memory chips or of a dataset split.

Owns the bundle format (`bundle`) and the one embedding path (`embed`): training validation,
`components.evaluation.model_eval`, the Ray Data actors of `components.index.embedding` and
search all embed through here. May import: components.constants, components.storage,
components.data (versions, sample index, reader), components.models, components.losses
(to rebuild a bundle's classifier). Must not import training, evaluation, index, tracking
or pipelines (they import it), nor Ray.
"""

from components.inference.bundle import (
    BUNDLE_FILENAME,
    BUNDLE_FORMAT,
    load_bundle,
    load_model,
    loss_from_bundle,
    make_bundle,
    model_from_bundle,
    save_bundle,
)
from components.inference.embed import (
    EmbeddedSplit,
    embed_arrays,
    embed_batches,
    embed_query_chip,
    embed_split,
    index_tap,
    split_loader,
)

__all__ = [
    "BUNDLE_FILENAME",
    "BUNDLE_FORMAT",
    "EmbeddedSplit",
    "embed_arrays",
    "embed_batches",
    "embed_query_chip",
    "embed_split",
    "index_tap",
    "load_bundle",
    "load_model",
    "loss_from_bundle",
    "make_bundle",
    "model_from_bundle",
    "save_bundle",
    "split_loader",
]
