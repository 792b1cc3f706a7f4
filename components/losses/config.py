"""The `loss` section (`conf/loss/<name>.yaml`): a registered loss and its constructor parameters.

Reading a config never builds a loss (a hierarchical-proxy loss runs k-means when built):
parameter *names* are checked here against the loss class's constructor signature, and their
*values* when the driver builds the loss with the real class count, before any worker starts.
"""

from __future__ import annotations

import inspect
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
        problem = signature_problem(self.name, self.params)
        if problem:
            raise ValueError(problem)
        return self


def configurable_params(name: str) -> dict[str, Any]:
    """The parameters a config may set for loss `name` (shape parameters come from the data),
    with their defaults (`inspect.Parameter.empty` for required ones)."""
    from components.losses import SHAPE_PARAMS, loss_params

    return {k: v for k, v in loss_params(name).items() if k not in SHAPE_PARAMS}


def signature_problem(name: str, params: dict[str, Any]) -> str | None:
    """What is wrong with the parameter names of `params` for loss `name`, or None."""
    accepted = configurable_params(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        return f"loss {name!r}: unknown parameter(s) {unknown}; valid parameters: {sorted(accepted)}"
    missing = sorted(k for k, default in accepted.items() if default is inspect.Parameter.empty and k not in params)
    if missing:
        return f"loss {name!r}: missing required parameter(s) {missing}; valid parameters: {sorted(accepted)}"
    return None
