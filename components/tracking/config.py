"""The `tracking` section: which MLflow store and experiment runs are recorded in."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class TrackingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str | None = None            # default: sqlite:///<storage.root>/mlflow.db
    experiment: str = "chipmatch"
