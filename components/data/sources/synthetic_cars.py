"""`synthetic_cars`: procedurally rendered overhead vehicle chips (components.synthetic).

The listing is the generator's item list (cheap, no rendering); workers render each item
from its index, so the whole dataset is a pure function of the config and seed.
"""

from __future__ import annotations

import functools
from typing import ClassVar, Literal

import numpy as np
from pydantic import field_validator

from components import constants as C
from components.data.records import SourceItem
from components.data.sources.base import Source, SourceConfig


class SyntheticCarsConfig(SourceConfig):
    source: Literal["synthetic_cars"] = "synthetic_cars"
    preset: Literal["tiny", "small", "small_hard", "large"] = "small"
    seed: int = 0                        # instance seeds, class sizes, GSDs
    # Optional overrides of the preset (None keeps the preset's value).
    num_classes: int | None = None
    num_images: int | None = None
    image_size: int | None = None
    channels: Literal[1, 3] | None = None
    min_per_class: int | None = None
    max_per_class: int | None = None
    catalog_seed: int | None = None      # which vehicle models the classes are
    jpeg_quality: int | None = None
    separation: float | None = None      # how far sibling variants differ (the difficulty knob)
    nuisance: dict[str, float | bool] | None = None   # NuisanceConfig fields to change, e.g. {clutter_odds: 1.0}

    @field_validator("nuisance")
    @classmethod
    def _known_nuisance_fields(cls, nuisance):
        from components.synthetic import FULL_NUISANCE

        if nuisance:
            FULL_NUISANCE.with_fields(**nuisance)   # raises naming the unknown or bad field
        return nuisance


@functools.lru_cache(maxsize=4)
def _items_of(config_json: str):
    """The spec and item list of one config, keyed by its JSON (the `nuisance` mapping makes
    the config itself unhashable)."""
    from components.synthetic import get_preset, synthetic_items

    config = SyntheticCarsConfig.model_validate_json(config_json)
    overrides = {name: getattr(config, name) for name in (
        "num_classes", "num_images", "image_size", "channels", "min_per_class", "max_per_class",
        "catalog_seed", "jpeg_quality", "separation") if getattr(config, name) is not None}
    preset = get_preset(config.preset)
    if config.nuisance:
        overrides["nuisance"] = preset.nuisance.with_fields(**config.nuisance)
    spec = preset.replace(seed=config.seed, **overrides)
    return spec, tuple(synthetic_items(spec))


class SyntheticCarsSource(Source):
    name: ClassVar[str] = "synthetic_cars"
    Config: ClassVar[type[SourceConfig]] = SyntheticCarsConfig
    config: SyntheticCarsConfig   # what `Source.__init__` stores: this source's own config

    def _listing(self):
        # The config's JSON is the cache key of `_items_of`; made once per source, not per chip
        # in `load`, and only the short string is kept, so a source shipped to a worker stays small.
        if getattr(self, "_listing_key", None) is None:
            self._listing_key = self.config.model_dump_json()
        return _items_of(self._listing_key)

    @property
    def natural_size(self) -> int:
        return self._listing()[0].image_size

    def list_items(self) -> list[SourceItem]:
        spec, items = self._listing()
        return [
            SourceItem(
                key=item.key, label=item.label, superclass=item.superclass,
                attributes=dict(item.attributes), locator={"index": index},
                metadata={C.SOURCE: f"synthetic_cars/{spec.name}/{item.key}", "gsd_m": item.gsd_m,
                          "model_index": item.model_index},
            )
            for index, item in enumerate(items)
        ]

    def load(self, item: SourceItem) -> np.ndarray:
        from components.synthetic import render_item

        return render_item(self._listing()[1][item.locator["index"]])
