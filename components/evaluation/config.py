"""The `evaluate` section: which layers and metrics the evaluate stage measures, and how it embeds."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    taps: list[str] = ["embedding", "penultimate"]      # feature layers measured side by side
    ks: list[int] = [1, 2, 4, 8, 16, 32]                 # Recall@K (add 10, 100, 1000 on request)
    batch_size: int = Field(256, ge=1)
    num_actors: int = Field(1, ge=1)                     # Ray Data embedding actors
    use_gpu: bool | None = None                          # None: when the cluster has GPUs
    grid_queries: int = Field(8, ge=1)                   # rows of the retrieval grid PNG
    grid_k: int = Field(8, ge=1)
    # Convergence studies: also measure the retrieval split at every epoch's training checkpoint
    # (logged as <split>_R_at_1 per epoch; never used to select a model). Training then keeps
    # every checkpoint, so leave it off otherwise.
    per_epoch: bool = False
