"""The `tune` section (`conf/tune/<name>.yaml`): what a sweep samples, and the trial configs it makes.

A sweep names the metric and mode, how many trials and how many at once, the ASHA scheduler,
the resources of one trial, fixed `overrides` (e.g. `loss: triplet`) and the `space` (dotted
config keys → distributions). `check_sweep` proves, when the config is read, that every
space key is a key a trial can change and that every candidate value makes a valid config;
`pipelines.config` calls it with its own `validate`, so this module never imports that one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from components.errors import ConfigError
from pipelines.raw_config import apply_value, group_choices

if TYPE_CHECKING:
    from pipelines.config import Config

TUNABLE_SECTIONS = ("model", "loss", "train")   # what a trial may change (data and splits are fixed)
NOT_TUNABLE = {"train": {"dataset"}}            # a sweep runs on one dataset version


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SearchDomain(_Section):
    """One entry of a sweep's `space`: how a config key is sampled.

    uniform / loguniform: `low`, `high` (floats; loguniform needs low > 0) · randint: `low`, `high`
    (integers, both inclusive) · choice: `values` (sampled at random) · grid: `values` (every one)
    """

    type: Literal["uniform", "loguniform", "randint", "choice", "grid"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _fields_fit_the_type(self) -> "SearchDomain":
        if self.type in ("choice", "grid"):
            if not self.values or self.low is not None or self.high is not None:
                raise ValueError(f"type {self.type} takes a non-empty `values` list and no low/high")
            return self
        if self.low is None or self.high is None or self.values is not None:
            raise ValueError(f"type {self.type} takes `low` and `high` and no `values`")
        if not self.low < self.high:
            raise ValueError(f"low={self.low} must be below high={self.high}")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low}")
        if self.type == "randint" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"randint needs integer low/high, got {self.low}, {self.high}")
        return self

    def candidates(self) -> list[Any]:
        """Values that must all be valid configs: the bounds, or every listed value."""
        if self.values is not None:
            return list(self.values)
        assert self.low is not None and self.high is not None   # checked by _fields_fit_the_type
        if self.type == "randint":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


class SchedulerConfig(_Section):
    type: Literal["asha", "fifo"] = "asha"        # asha: stop poor trials early; fifo: run every trial fully
    grace_period: int = Field(1, ge=1)            # epochs before a trial can be stopped
    reduction_factor: float = Field(2.0, gt=1)
    max_t: int | None = Field(None, ge=1)         # default: train.epochs


class TrialResources(_Section):
    """What the training workers of one trial use in total, split evenly over train.num_workers
    (null: train.cpus_per_worker / train.use_gpu as configured). Fractional GPUs pack trials."""

    cpu: float | None = Field(None, gt=0)
    gpu: float | None = Field(None, ge=0)


class SweepConfig(_Section):
    """A Ray Tune sweep (`conf/tune/<name>.yaml`); keys of `space` are dotted config keys."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    metric: str = "val_mAP"
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(8, ge=1)             # samples drawn (× every combination of `grid` entries)
    max_concurrent_trials: int = Field(1, ge=1)
    seed: int = 0                                 # of the sampler: the same file draws the same trials
    scheduler: SchedulerConfig = SchedulerConfig()
    resources_per_trial: TrialResources = TrialResources()
    overrides: dict[str, Any] = {}                # dotted config keys set for every trial (e.g. loss: triplet)
    space: dict[str, SearchDomain]

    @field_validator("metric")
    @classmethod
    def _reported_metric(cls, metric: str) -> str:
        from components import constants as C

        reported = [f"val_{C.METRIC_MAP}", f"val_{C.recall_at(1)}", f"val_{C.METRIC_ACCURACY}", "best_val_mAP", "train_loss"]
        if metric not in reported:
            raise ValueError(f"metric {metric!r} is not reported by training; choose one of {reported}")
        return metric

    @field_validator("space")
    @classmethod
    def _tunable_keys(cls, space: dict[str, SearchDomain]) -> dict[str, SearchDomain]:
        if not space:
            raise ValueError("space is empty: name at least one config key to sample, e.g. train.lr")
        for key in space:
            section, _, rest = key.partition(".")
            if section not in TUNABLE_SECTIONS or not rest:
                raise ValueError(f"space key {key!r}: a trial can change keys of {list(TUNABLE_SECTIONS)} only "
                                 "(e.g. train.lr, model.embedding_dim, loss.params.margin)")
        return space


def available_sweeps() -> list[str]:
    return group_choices("tune")


def base_raw(config: "Config") -> dict[str, Any]:
    """What every trial starts from: the config without `tune` and `runs`, plus the sweep's overrides."""
    raw = config.model_dump(mode="json", exclude={"tune", "runs"})
    for key, value in (config.tune.overrides if config.tune else {}).items():
        apply_value(raw, key, copy.deepcopy(value), f"tune.overrides.{key}")
    return raw


def trial_raw(base: dict[str, Any], sweep: SweepConfig, sampled: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
    """One trial's raw config (sampled values applied, resources per worker set) and its GPUs per worker."""
    raw = copy.deepcopy(base)
    for key, value in sampled.items():
        apply_value(raw, key, value, f"tune.space.{key}")
    train = raw.setdefault("train", {})
    workers = int(train.get("num_workers") or 1)
    resources = sweep.resources_per_trial
    if resources.cpu is not None:
        train["cpus_per_worker"] = resources.cpu / workers
    gpus_per_worker = None
    if resources.gpu is not None:
        train["use_gpu"] = resources.gpu > 0
        gpus_per_worker = resources.gpu / workers if resources.gpu > 0 else None
    if train.get("threads_per_worker") is None:
        # Concurrent trials share the cores: one torch thread per reserved CPU, not one per core.
        train["threads_per_worker"] = max(1, int(train.get("cpus_per_worker") or 1))
    return raw, gpus_per_worker


def check_sweep(config: "Config", validate: Callable[[dict[str, Any]], "Config"]) -> None:
    """Every space key is a config key a trial can change, and every candidate value (bounds,
    listed values) gives a valid config. Raises ValueError naming the key and the valid ones."""
    sweep = config.tune
    if sweep is None:
        return
    try:
        base = validate(base_raw(config))
    except ConfigError as exc:
        reason = str(exc).removeprefix("invalid config:").strip()
        raise ValueError(f"tune.overrides of sweep {sweep.name!r} make an invalid config: {reason}") from None
    for key, domain in sweep.space.items():
        problem = _unknown_key(base, key)
        if problem:
            raise ValueError(f"tune.space: {problem}")
        for value in domain.candidates():
            raw = base_raw(config)
            apply_value(raw, key, value, f"tune.space.{key}")
            try:
                validate(raw)
            except ConfigError as exc:
                reason = str(exc).removeprefix("invalid config:").strip()
                raise ValueError(f"tune.space.{key}: the value {value!r} gives an invalid config: {reason}") from None
    max_t = sweep.scheduler.max_t or max_epochs(sweep, base.train.epochs)
    if sweep.scheduler.type == "asha" and sweep.scheduler.grace_period > max_t:
        raise ValueError(f"tune.scheduler.grace_period={sweep.scheduler.grace_period} exceeds max_t={max_t} epochs "
                         "(max_t defaults to train.epochs): lower grace_period or raise train.epochs")


def max_epochs(sweep: SweepConfig, epochs: int) -> int:
    """The most epochs a trial can train: train.epochs, or the largest sampled value."""
    domain = sweep.space.get("train.epochs")
    return int(max(domain.candidates())) if domain else epochs


def _unknown_key(base: "Config", key: str) -> str | None:
    from components.losses.config import configurable_params

    section, _, rest = key.partition(".")
    if section == "loss" and rest.startswith("params."):
        name = rest.removeprefix("params.")
        accepted = sorted(configurable_params(base.loss.name))
        if name not in accepted:
            return (f"{key!r}: loss {base.loss.name!r} has no parameter {name!r}; its parameters: {accepted} "
                    "(set the loss in the sweep's overrides, e.g. `loss: triplet`)")
        return None
    model = type(getattr(base, section))
    valid = sorted(set(model.model_fields) - NOT_TUNABLE.get(section, set()))
    if section == "loss":
        valid = [k for k in valid if k != "params"] + ["params.<name>"]
    if rest not in valid:
        return f"{key!r} is not a config key a trial can set; valid keys under {section}: {valid}"
    return None
