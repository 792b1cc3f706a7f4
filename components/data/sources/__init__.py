"""Image sources, selected by name (`data.source` in config)."""

from __future__ import annotations

from components.data.sources.base import Source, SourceConfig
from components.data.sources.fashion_mnist import FashionMnistSource
from components.data.sources.folder import FolderSource
from components.data.sources.geotiff import GeoTiffSource
from components.data.sources.manifest import ManifestSource
from components.data.sources.synthetic_cars import SyntheticCarsSource

SOURCES: dict[str, type[Source]] = {
    cls.name: cls
    for cls in (SyntheticCarsSource, FashionMnistSource, FolderSource, ManifestSource, GeoTiffSource)
}
SOURCE_CONFIGS = tuple(cls.Config for cls in SOURCES.values())


def available_sources() -> list[str]:
    return list(SOURCES)


def source_class(name: str | None) -> type[Source]:
    """The source registered as `name`; raises naming the valid ones."""
    if name not in SOURCES:
        raise ValueError(f"data.source {name!r} is unknown; valid choices: {available_sources()}")
    return SOURCES[name]


def build_source(config: SourceConfig) -> Source:
    return source_class(getattr(config, "source", None))(config)


def source_is_upright(source_section: dict) -> bool:
    """Whether the source a dataset version was ingested from (the manifest's `source` section)
    has upright imagery (see `Source.upright`). Raises for a source chipmatch does not know."""
    return source_class(source_section.get("source")).upright


def source_from_dict(values: dict) -> Source:
    """Build a source from a plain dict (how configs travel to Ray workers)."""
    source = source_class(values.get("source"))
    return source(source.Config(**values))


__all__ = ["Source", "SourceConfig", "SOURCES", "SOURCE_CONFIGS", "available_sources", "source_class", "build_source",
           "source_from_dict", "source_is_upright"]
