"""The one interface every image source implements.

A source is built from its typed config (a pydantic model: the constructor is the schema) and
does two things:

- `list_items()` on the driver: enumerate inputs as `SourceItem`s without reading pixels;
  inputs that are already known to be bad (no label, unknown extension) are listed with a
  `reject_reason` so that nothing is ever dropped silently;
- `load(item)` in a Ray worker: return the raw input, either encoded bytes (decoded and
  validated by `components.data.decode`) or a uint8 pixel array; raise `Rejection` for
  inputs that cannot be read. `load` finds the pixels from `item.locator` (and the config)
  alone: only the key and the locator travel to the workers, labels and metadata stay on
  the driver (ingest's per-input cost is mostly Python overhead on small chips).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from components.data.records import SourceItem


class SourceConfig(BaseModel):
    """Fields every source config has. Unknown keys are errors (`extra="forbid"`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None  # dataset name (lineage of versions); defaults to the source name


class Source(ABC):
    name: ClassVar[str]
    Config: ClassVar[type[SourceConfig]]
    # Whether the imagery has a canonical "up" (photographs of upright objects, like clothes).
    # Overhead chips have none: any rotation of a vehicle seen from above is as real as another.
    # The training stage picks its default augmentation from this (`train.rotation`).
    upright: ClassVar[bool] = False

    def __init__(self, config: SourceConfig):
        self.config = config

    @property
    def natural_size(self) -> int | None:
        """Chip size the source produces natively, the ingest's default `image.size` (None: varies
        per input). A property so that sources whose size depends on their config can compute it."""
        return None

    @abstractmethod
    def list_items(self) -> list[SourceItem]:
        ...

    @abstractmethod
    def load(self, item: SourceItem) -> bytes | np.ndarray:
        ...

    def dataset_name(self) -> str:
        return self.config.name or self.name
