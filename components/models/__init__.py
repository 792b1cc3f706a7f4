"""Models: backbones, the embedding head, feature taps, preprocessing.

Entry points: :func:`build_model` (backbone + embedding head), :func:`build_backbone`,
:func:`build_train_transform` / :func:`build_eval_transform`, and
:func:`import_torchvision` (the only way this project imports torchvision).
Importing this package builds nothing and does not import torchvision.
"""

from components.models.backbones import (
    POOLED,
    STAGE_NAMES,
    STEMS,
    Backbone,
    ResNetBackbone,
    SmallCNN,
    available_backbones,
    build_backbone,
    stem_for_image_size,
)
from components.models.embedder import (
    DEFAULT_TAPS,
    TAP_EMBEDDING,
    TAP_EMBEDDING_RAW,
    TAP_PENULTIMATE,
    EmbeddingModel,
    available_taps,
    build_model,
)
from components.models.heads import EmbeddingHead
from components.models.torchvision_compat import import_torchvision, import_torchvision_submodule
from components.models.transforms import (
    DEFAULT_MEAN,
    DEFAULT_STD,
    IMAGENET_GRAY_MEAN,
    IMAGENET_GRAY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentParams,
    ChipAugment,
    ChipTransform,
    Normalize,
    batch_to_tensor,
    build_eval_transform,
    build_train_transform,
    image_to_tensor,
    to_float,
)
from components.models.weights import adapt_input_channels, load_backbone_weights, load_state_dict_file

__all__ = [
    "DEFAULT_MEAN",
    "DEFAULT_STD",
    "DEFAULT_TAPS",
    "IMAGENET_GRAY_MEAN",
    "IMAGENET_GRAY_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "POOLED",
    "STAGE_NAMES",
    "STEMS",
    "TAP_EMBEDDING",
    "TAP_EMBEDDING_RAW",
    "TAP_PENULTIMATE",
    "AugmentParams",
    "Backbone",
    "ChipAugment",
    "ChipTransform",
    "EmbeddingHead",
    "EmbeddingModel",
    "Normalize",
    "ResNetBackbone",
    "SmallCNN",
    "adapt_input_channels",
    "available_backbones",
    "available_taps",
    "batch_to_tensor",
    "build_backbone",
    "build_eval_transform",
    "build_model",
    "build_train_transform",
    "image_to_tensor",
    "import_torchvision",
    "import_torchvision_submodule",
    "load_backbone_weights",
    "load_state_dict_file",
    "stem_for_image_size",
    "to_float",
]
