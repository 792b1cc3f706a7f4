"""Configuration: YAML files under `conf/`, `key=value` overrides, validated into typed objects.

Each section's schema lives beside what it configures (`components/*/config.py`, the sweep in
`pipelines.sweep`); this module only composes them into one `Config` and turns pydantic's
errors into messages that name the key.

- A config file holds sections (`data`, `split`, `shard`, `storage`, `ray`, ...). A section
  given as a string names a file of that group: `data: synthetic_small` loads
  `conf/data/synthetic_small.yaml`. The same works on the command line (`data=fashion_mnist`).
- Overrides are dotted keys with YAML values: `shard.samples_per_shard=500`,
  `split.query_fraction=null`. Overriding `data.source` with another source starts that
  section afresh, so `data.source=folder data.root=DIR` works on top of any file.
- Validation is strict: an unknown key or a bad value raises `ConfigError` naming the key
  and listing the valid keys or choices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.data.config import ShardConfig
from components.data.sources import SOURCE_CONFIGS, available_sources
from components.data.splits import SplitConfig
from components.errors import ConfigError
from components.evaluation.config import EvaluateConfig
from components.index.config import IndexConfig
from components.losses.config import LossConfig
from components.models.config import ModelConfig
from components.release.config import RetrainConfig
from components.storage.config import StorageConfig
from components.tracking.config import TrackingConfig
from components.training.config import TrainConfig
from pipelines.raw_config import CONF_DIR, DEFAULT_CONFIG, apply_override, apply_value, read_config_file, resolve_group
from pipelines.sweep import SweepConfig, check_sweep

__all__ = ["CONF_DIR", "DEFAULT_CONFIG", "Config", "ConfigError", "EvaluateConfig", "IndexConfig", "LossConfig",
           "ModelConfig", "RayConfig", "RunSpec", "ShardConfig", "SplitConfig", "StorageConfig", "TrackingConfig",
           "TrainConfig", "apply_value", "load_config", "validate"]


RESERVED_RUN_NAME = "raw_pixels"   # the evaluate stage's untrained baseline (pipelines.baseline)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Union over a tuple of classes: no `X | Y` spelling exists for it.
DataConfig = Annotated[Union[SOURCE_CONFIGS], Field(discriminator="source")]  # type: ignore[valid-type]  # noqa: UP007


class RayConfig(Section):
    address: str | None = None       # None: $RAY_ADDRESS if set, else a local embedded Ray
    num_cpus: int | None = None      # logical CPUs of the embedded Ray (None: all cores)


class RunSpec(Section):
    """One training run of a sequence: a name, a loss, and any `train` field to change."""

    name: str
    loss: LossConfig                  # a name in the YAML: conf/loss/<name>.yaml
    overrides: dict[str, Any] = {}

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_file(cls, value: Any) -> Any:
        return resolve_group("loss", value) if isinstance(value, str) else value


class Config(Section):
    data: DataConfig
    split: SplitConfig = SplitConfig()
    shard: ShardConfig = ShardConfig()
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig(name="triplet")
    train: TrainConfig = TrainConfig()
    runs: list[RunSpec] = []          # trained in order by `chipmatch train` (default: one run of `loss`)
    seeds: list[int] = []             # each run once per seed: `<run>-s<seed>` (see `pipelines.runs.run_plan`)
    tracking: TrackingConfig = TrackingConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    index: IndexConfig = IndexConfig()
    tune: SweepConfig | None = None   # `chipmatch tune`: conf/tune/<name>.yaml
    retrain: RetrainConfig = RetrainConfig()   # `chipmatch retrain` / `promote` / `rollback`

    @model_validator(mode="after")
    def _runs_reference_earlier_runs(self) -> "Config":
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: each seed once, got {self.seeds}")
        names: list[str] = []
        for run in self.runs:
            if run.name in names:
                raise ValueError(f"runs: the name {run.name!r} is used twice")
            if run.name == RESERVED_RUN_NAME:
                raise ValueError(f"runs: the name {run.name!r} is the raw-pixel baseline's row; choose another")
            TrainConfig(**{**self.train.model_dump(), **run.overrides})   # overrides name real fields
            if self.seeds and "seed" in run.overrides:
                raise ValueError(f"runs.{run.name}.overrides.seed={run.overrides['seed']!r} conflicts with seeds="
                                 f"{self.seeds}: drop one (seeds trains every run once per seed)")
            init = run.overrides.get("init_from")
            if init and "://" not in init and "/" not in init and init not in names:
                raise ValueError(f"runs.{run.name}.init_from={init!r} names no earlier run; earlier runs: {names}")
            names.append(run.name)
        return self


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (default: conf/quickstart.yaml), apply overrides, validate."""
    raw = read_config_file(path)
    for override in overrides:
        apply_override(raw, override)
    return validate(raw)


def validate(raw: dict[str, Any]) -> Config:
    """A raw config as a `Config`; a sweep section is checked against the rest of the config."""
    try:
        config = Config(**raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from None
    except TypeError as exc:   # e.g. a section given as a list: pydantic cannot unpack it
        raise ConfigError(str(exc)) from None
    try:
        check_sweep(config, validate)   # space keys name real config keys; every candidate value validates
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"invalid config:\n  {exc}") from None
    return config


def format_errors(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        location = [str(part) for part in error["loc"]]
        if len(location) > 1 and location[0] == "data" and location[1] in available_sources():
            location.pop(1)  # pydantic puts the union tag in the path; users never write it
        key = ".".join(location) or "<config>"
        kind = error["type"]
        if kind == "extra_forbidden":
            lines.append(f"unknown key {key!r}; valid keys here: {valid_keys(error['loc'][:-1])}")
        elif kind == "missing":
            lines.append(f"missing key {key!r} (required)")
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            lines.append(f"{key}.source must be one of {available_sources()}; got {error.get('input', {}).get('source')!r}"
                         if isinstance(error.get("input"), dict) else f"{key}: choose a source from {available_sources()}")
        elif not location and kind == "value_error":   # a check across sections: its message says it all
            lines.append(str(error["msg"]).removeprefix("Value error, "))
        else:
            lines.append(f"bad value for {key!r}: {error['msg']} (got {error.get('input')!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def valid_keys(location: tuple) -> list[str]:
    """The field names of the model found at `location` inside `Config`."""
    model: Any = Config
    skip_key = False
    for part in location:
        if isinstance(part, str) and part in available_sources():
            model = next(c for c in SOURCE_CONFIGS if c.model_fields["source"].default == part)
            continue
        if skip_key:      # the key of a dict of sections (tune.space.<key>)
            skip_key = False
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            break
        annotation, skip_key = _section_of(field.annotation)
        model = annotation or model
    return sorted(getattr(model, "model_fields", {}))


def _section_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The section model a field holds (also through `X | None` and `dict[str, X]`), and
    whether the next location part is a dict key."""

    def model_of(candidate: Any) -> type[BaseModel] | None:
        return candidate if isinstance(candidate, type) and issubclass(candidate, BaseModel) else None

    if model_of(annotation):
        return annotation, False
    args = get_args(annotation)
    if get_origin(annotation) is dict and len(args) == 2:
        return model_of(args[1]), model_of(args[1]) is not None
    models = [a for a in args if model_of(a)]
    return (models[0], False) if len(models) == 1 and len(args) == 2 and type(None) in args else (None, False)
