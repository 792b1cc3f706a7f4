"""The `model` section: backbone and embedding head (`build_model` takes these fields)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backbone: Literal["small_cnn", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"] = "small_cnn"
    embedding_dim: int = Field(256, ge=8, le=4096)
    batchnorm: bool = True
    scale: float = Field(1.0, gt=0)
    weights: str | None = None       # local backbone state_dict (never downloaded)
