"""The `retrain:` section: what `chipmatch retrain`, `promote` and `rollback` put into service, and
the gate a challenger must pass.

Metric names of the gate are those `chipmatch retrain` records for both models:
``benchmark/<metric>`` on the fixed benchmark (the unseen classes of the champion's dataset
version) and ``new/<metric>`` on the unseen classes of the new version, where ``<metric>`` is
a retrieval metric (``mAP``, ``MAP@R``, ``R@1``, ...) or ``mAP/superclass/<superclass>``
(the mean AP of that superclass's classes). Guarded keys may be globs
(``benchmark/mAP/superclass/*``), as `components.release.gate.decide` expands them.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

BENCHMARK_PREFIX = "benchmark/"   # the champion's version's unseen classes (never changes)
NEW_PREFIX = "new/"               # the new version's unseen classes
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _check_metric_name(key: str, name: str) -> None:
    if not name.startswith((BENCHMARK_PREFIX, NEW_PREFIX)) or name in (BENCHMARK_PREFIX, NEW_PREFIX):
        raise ValueError(f"{key} {name!r} must name a recorded metric: 'benchmark/<metric>' (the fixed benchmark) "
                         "or 'new/<metric>' (the new version's unseen classes), e.g. 'benchmark/mAP', "
                         "'new/R@1', 'benchmark/mAP/superclass/*'")


class RetrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "chipmatch"            # registered model name and live index name (indexes/<name>/LIVE.json)
    # The challenger's recipe: "champion" fine-tunes with the recipe recorded on the champion
    # (the first run's recipe is `run`'s); "config" uses `run` of this config every time.
    recipe: Literal["champion", "config"] = "champion"
    run: str | None = None             # a run name of `runs` (default: the first run, or `loss`)
    primary: str = "benchmark/mAP"     # must beat the champion's by `margin`
    margin: float = Field(0.0, ge=0)   # absolute (0.01 = one point of mAP); a tie never promotes
    guarded: dict[str, float] = {"benchmark/R@1": 0.02, "benchmark/MAP@R": 0.02, "new/mAP": 0.02}
    keep_generations: int = Field(3, ge=2)   # indexes kept after they stop being live (live.prune_generations)
    lock_stale_after: float = Field(3600.0, gt=0)   # seconds without a refresh before a dead owner's lock breaks
    lock_wait: float = Field(0.0, ge=0)      # seconds to wait for another retrain before giving up (exit 5)

    @field_validator("name")
    @classmethod
    def _one_segment(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"must be one path segment of letters, digits, '.', '_' or '-' (it names the "
                             f"registered model and indexes/<name>/LIVE.json), got {name!r}")
        return name

    @field_validator("primary")
    @classmethod
    def _primary_is_recorded(cls, primary: str) -> str:
        _check_metric_name("retrain.primary", primary)
        if set("*?[") & set(primary):
            raise ValueError(f"retrain.primary {primary!r} must be one metric, not a pattern")
        return primary

    @field_validator("guarded")
    @classmethod
    def _tolerances(cls, guarded: dict[str, float]) -> dict[str, float]:
        for name, tolerance in guarded.items():
            _check_metric_name("retrain.guarded key", name)
            if not math.isfinite(tolerance) or tolerance < 0:
                raise ValueError(f"retrain.guarded[{name!r}] must be a tolerance >= 0 (the largest allowed drop, "
                                 f"0.02 = two points), got {tolerance!r}")
        return guarded
