"""The `shard` section: chip size, bands and shard size of an ingested version.

The channel and size limits are checked here, when the config is read, so a bad value is
named before any work starts.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from components.data.decode import MIN_SIDE


class ShardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    samples_per_shard: int = Field(1000, ge=2)
    image_size: int | None = Field(None, ge=MIN_SIDE)   # None: the source's native chip size
    channels: int = Field(1, ge=1, le=16)   # 1 gray, 3 RGB, other counts keep the first bands (multi-band)
    drop_duplicates: bool = True
