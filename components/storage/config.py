"""The `storage` section: where every output of chipmatch lives."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StorageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    root: str = "./chipmatch-data"   # local path or s3://, gs://, hdfs:// URI
