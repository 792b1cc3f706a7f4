"""The `shard` section: chip size, bands and shard size of an ingested version.

The channel and size limits are `ImageSpec`'s (components/data/ingest.py), checked when the
config is read, so a bad value is named before any work starts and the limits live in one place.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ShardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    samples_per_shard: int = Field(1000, ge=2)
    image_size: int | None = None   # None: the source's native chip size
    channels: int = 1               # 1 gray, 3 RGB, other counts keep the first bands (multi-band)
    drop_duplicates: bool = True

    @model_validator(mode="after")
    def _chip_limits(self) -> "ShardConfig":
        from components.data.ingest import ImageSpec

        ImageSpec(self.image_size, self.channels)   # raises naming shard.channels / shard.image_size
        return self
