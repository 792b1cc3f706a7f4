"""The `loss` section (`conf/loss/<name>.yaml`): a registered loss and its constructor parameters.

Reading a config never builds a loss (a hierarchical-proxy loss runs k-means when built):
parameter *names* are checked here against the loss class's constructor signature, and their
*values* when the driver builds the loss with the real class count, before any worker starts.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator


class LossConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    params: dict[str, Any] = {}
    attributes: list[str] | None = None   # log_ratio: which continuous labels (default: all)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from components.losses import available_losses

        if name not in available_losses():
            raise ValueError(f"unknown loss {name!r}; valid choices: {available_losses()}")
        return name

    @model_validator(mode="after")
    def _params_fit_the_signature(self) -> "LossConfig":
        from components.losses import check_loss_params

        check_loss_params(self.name, self.params)   # names only (nested miner specs too); raises ValueError
        return self


def configurable_params(name: str) -> dict[str, Any]:
    """The parameters a config may set for loss `name` (shape parameters come from the data),
    with their defaults (`inspect.Parameter.empty` for required ones)."""
    from components.losses import SHAPE_PARAMS, loss_params

    return {k: v for k, v in loss_params(name).items() if k not in SHAPE_PARAMS}
