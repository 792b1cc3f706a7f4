"""The `index` section: the faiss factory string, sharding and search defaults, and what to embed."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class IndexConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    factory: str = "Flat"                # faiss index_factory string
    num_shards: int = Field(1, ge=1)
    train_size: int = Field(100_000, ge=1)
    nprobe: int | None = Field(None, ge=1)
    ef_search: int | None = Field(None, ge=1)
    run: str | None = None               # which trained run to index (default: best retrieval mAP)
    splits: list[Literal["train", "val", "unseen", "test"]] = ["train", "val", "unseen", "test"]   # those present
    batch_size: int = Field(256, ge=1)
    num_actors: int = Field(1, ge=1)
    use_gpu: bool | None = None
    # The feature layer the index holds (and query images are embedded with): the embedding the
    # loss trained, or the backbone's pooled output before the head. With few training classes
    # the penultimate layer can retrieve unseen classes better (README, Results: measure it with
    # evaluate.taps first, on validation or the unseen split, before choosing it).
    tap: Literal["embedding", "embedding_raw", "penultimate"] = "embedding"
