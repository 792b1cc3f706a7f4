"""Configuration: YAML files under `conf/`, `key=value` overrides, validated into typed objects.

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
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.data.sources import SOURCE_CONFIGS, available_sources
from components.data.splits import SplitSpec

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
DEFAULT_CONFIG = CONF_DIR / "quickstart.yaml"


class ConfigError(ValueError):
    """A config that cannot be used, with a message that says what to change."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


DataConfig = Annotated[Union[SOURCE_CONFIGS], Field(discriminator="source")]  # type: ignore[valid-type]


class SplitConfig(Section):
    seen_fraction: float = Field(0.6, gt=0, lt=1)
    val_fraction: float = Field(0.15, ge=0, lt=1)
    query_fraction: float | None = Field(None, gt=0, lt=1)
    seed: int = 0

    def spec(self) -> SplitSpec:
        return SplitSpec(**self.model_dump())


class ShardConfig(Section):
    samples_per_shard: int = Field(1000, ge=2)
    image_size: int | None = Field(None, ge=4)   # None: the source's native chip size
    channels: int = Field(1, ge=1, le=16)   # 1 gray, 3 RGB, other counts keep the first bands (multi-band)
    drop_duplicates: bool = True


class StorageConfig(Section):
    root: str = "./chipmatch-data"   # local path or s3://, gs://, hdfs:// URI


class RayConfig(Section):
    address: str | None = None       # None: $RAY_ADDRESS if set, else a local embedded Ray
    num_cpus: int | None = None      # logical CPUs of the embedded Ray (None: all cores)


class ModelConfig(Section):
    backbone: Literal["small_cnn", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"] = "small_cnn"
    embedding_dim: int = Field(256, ge=8, le=4096)
    batchnorm: bool = True
    scale: float = Field(1.0, gt=0)
    weights: str | None = None       # local backbone state_dict (never downloaded)


class LossConfig(Section):
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
    def _params_fit_the_loss(self) -> "LossConfig":
        from components.losses import build_loss, loss_class

        shape = {"num_classes": 4, "embedding_dim": 8} if getattr(loss_class(self.name), "has_parameters", False) else {}
        try:
            build_loss(self.name, **shape, **self.params)   # raises naming the bad parameter
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        return self


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    classes_per_batch: int = Field(16, ge=1)      # P
    images_per_class: int = Field(4, ge=1)        # K
    batches_per_epoch: int | None = Field(None, ge=1)   # default: ceil(N / (P·K))
    lr: float = Field(1e-3, gt=0)
    loss_lr_multiplier: float = Field(1.0, gt=0)  # proxies / classifier weights
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    warmup_epochs: float = Field(0.0, ge=0)
    augment: bool = True
    rotation: Literal["any", "right", "none"] = "any"
    seed: int = 0
    amp: bool = True                              # bfloat16 autocast on GPU
    init_from: str | None = None                  # a run name of this config's `runs`, or a model URI
    freeze_backbone: bool = False
    num_workers: int = Field(1, ge=1)             # Ray Train workers (DDP)
    use_gpu: bool | None = None                   # None: when the cluster has GPUs
    cpus_per_worker: float = Field(1.0, gt=0)
    threads_per_worker: int | None = Field(None, ge=1)
    max_failures: int = Field(1, ge=0)            # worker-group restarts from the last checkpoint
    fail_at_epoch: int | None = None              # test hook: kill one worker once at this epoch
    dataset: str | None = None                    # manifest URI (default: the latest ingested version)


class RunSpec(Section):
    """One training run of a sequence: a name, a loss, and any `train` field to change."""

    name: str
    loss: str | LossConfig
    overrides: dict[str, Any] = {}

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_file(cls, value: Any) -> Any:
        return _resolve_group("loss", value) if isinstance(value, str) else value


class TrackingConfig(Section):
    uri: str | None = None            # default: sqlite:///<storage.root>/mlflow.db
    experiment: str = "chipmatch"


class EvaluateConfig(Section):
    taps: list[str] = ["embedding", "penultimate"]      # feature layers measured side by side
    ks: list[int] = [1, 2, 4, 8, 16, 32]                 # Recall@K (add 10, 100, 1000 on request)
    batch_size: int = Field(256, ge=1)
    num_actors: int = Field(1, ge=1)                     # Ray Data embedding actors
    use_gpu: bool | None = None                          # None: when the cluster has GPUs
    grid_queries: int = Field(8, ge=1)                   # rows of the retrieval grid PNG
    grid_k: int = Field(8, ge=1)


TUNABLE_SECTIONS = ("model", "loss", "train")   # what a trial may change (data and splits are fixed)


class SearchDomain(Section):
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
        if self.type == "randint":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


class SchedulerConfig(Section):
    type: Literal["asha", "fifo"] = "asha"        # asha: stop poor trials early; fifo: run every trial fully
    grace_period: int = Field(1, ge=1)            # epochs before a trial can be stopped
    reduction_factor: float = Field(2.0, gt=1)
    max_t: int | None = Field(None, ge=1)         # default: train.epochs


class TrialResources(Section):
    """What the training workers of one trial use in total, split evenly over train.num_workers
    (null: train.cpus_per_worker / train.use_gpu as configured). Fractional GPUs pack trials."""

    cpu: float | None = Field(None, gt=0)
    gpu: float | None = Field(None, ge=0)


class SweepConfig(Section):
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


class IndexConfig(Section):
    factory: str = "Flat"                # faiss index_factory string
    num_shards: int = Field(1, ge=1)
    train_size: int = Field(100_000, ge=1)
    nprobe: int | None = Field(None, ge=1)
    ef_search: int | None = Field(None, ge=1)
    run: str | None = None               # which trained run to index (default: best unseen mAP)
    splits: list[Literal["train", "val", "unseen"]] = ["train", "val", "unseen"]
    batch_size: int = Field(256, ge=1)
    num_actors: int = Field(1, ge=1)
    use_gpu: bool | None = None


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
    tracking: TrackingConfig = TrackingConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    index: IndexConfig = IndexConfig()
    tune: SweepConfig | None = None   # `chipmatch tune`: conf/tune/<name>.yaml

    @model_validator(mode="after")
    def _sweep_fits_the_config(self) -> "Config":
        if self.tune is not None:
            from pipelines.tune import check_sweep

            check_sweep(self)   # space keys name real config keys; every candidate value validates
        return self

    @model_validator(mode="after")
    def _runs_reference_earlier_runs(self) -> "Config":
        names: list[str] = []
        for run in self.runs:
            if run.name in names:
                raise ValueError(f"runs: the name {run.name!r} is used twice")
            TrainConfig(**{**self.train.model_dump(), **run.overrides})   # overrides name real fields
            init = run.overrides.get("init_from")
            if init and "://" not in init and "/" not in init and init not in names:
                raise ValueError(f"runs.{run.name}.init_from={init!r} names no earlier run; earlier runs: {names}")
            names.append(run.name)
        return self


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (default: conf/quickstart.yaml), apply overrides, validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(raw).__name__}")
    raw = {name: _resolve_group(name, value) for name, value in raw.items()}
    for override in overrides:
        _apply_override(raw, override)
    return validate(raw)


def validate(raw: dict[str, Any]) -> Config:
    try:
        return Config(**raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from None
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def _resolve_group(section: str, value: Any) -> Any:
    """A string section value names `conf/<section>/<value>.yaml`."""
    if not isinstance(value, str):
        return value
    group = CONF_DIR / section
    choices = sorted(p.stem for p in group.glob("*.yaml")) if group.is_dir() else []
    file = group / f"{value}.yaml"
    if not file.is_file():
        raise ConfigError(f"{section}={value!r}: no file {file}; valid choices: {choices}")
    return yaml.safe_load(file.read_text()) or {}


def _apply_override(raw: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key=value (e.g. shard.samples_per_shard=500)")
    dotted, text = override.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {override!r} has an empty key")
    value = yaml.safe_load(text) if text.strip() else None
    apply_value(raw, keys, value, f"override {override!r}")


def apply_value(raw: dict[str, Any], keys: list[str] | str, value: Any, what: str | None = None) -> None:
    """Set a dotted key of a raw (unvalidated) config as an override would (`loss` → conf/loss/…)."""
    keys = keys.split(".") if isinstance(keys, str) else keys
    what = what or f"key {'.'.join(keys)!r}"
    if len(keys) == 1:
        raw[keys[0]] = _resolve_group(keys[0], value)
        return
    if keys == ["data", "source"] and raw.get("data", {}).get("source") != value:
        raw["data"] = {}  # another source: the old source's keys do not apply
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: {'.'.join(keys[:depth + 1])} is a value, not a section")
        node = child
    node[keys[-1]] = value


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
    from typing import get_args, get_origin

    def model_of(candidate: Any) -> type[BaseModel] | None:
        return candidate if isinstance(candidate, type) and issubclass(candidate, BaseModel) else None

    if model_of(annotation):
        return annotation, False
    args = get_args(annotation)
    if get_origin(annotation) is dict and len(args) == 2:
        return model_of(args[1]), model_of(args[1]) is not None
    models = [a for a in args if model_of(a)]
    return (models[0], False) if len(models) == 1 and len(args) == 2 and type(None) in args else (None, False)
