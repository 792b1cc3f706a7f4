"""GeoTIFF scenes + GeoJSON point/box annotations, cut into chips with rasterio windows.

Each scene `<dir>/<scene>.tif` has a sidecar `<scene>.geojson` (or one in `annotations_dir`)
whose features are Points (chip centred on the point) or Polygons (chip centred on the box;
with `chip_mode: box` the chip is the box itself, padded, and later resized). Coordinates are
in `annotation_crs` (GeoJSON's WGS84 by default; "scene" means the raster's own CRS).
Every chip keeps its scene id, CRS, pixel window and lon/lat.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from components import constants as C
from components.data.decode import rescale_to_uint8
from components.data.records import Rejection, SourceItem, safe_key
from components.data.sources.base import Source, SourceConfig

SCENE_SUFFIXES = (".tif", ".tiff")


class GeoTiffConfig(SourceConfig):
    source: Literal["geotiff"] = "geotiff"
    scenes: str                              # a folder of GeoTIFFs, or a single GeoTIFF
    annotations_dir: str | None = None       # where `<scene>.geojson` lives (default: beside the scene)
    class_property: str = "class"
    superclass_property: str | None = None
    annotation_crs: str = "EPSG:4326"        # or "scene"
    chip_size: int = 64                      # pixels (chip_mode=fixed)
    chip_mode: Literal["fixed", "box"] = "fixed"
    box_padding: float = 0.1                 # fraction of the box size added on each side (chip_mode=box)
    edge: Literal["reject", "pad"] = "reject"   # chips crossing the scene border
    bands: tuple[int, ...] | None = None     # 1-based band indexes to read (default: all)


def _rasterio():
    try:
        import rasterio
        import rasterio.warp  # the submodule is not imported by `import rasterio`; used below
    except ImportError as exc:  # pragma: no cover - rasterio is a dependency
        raise ImportError("the 'geotiff' source needs rasterio: pip install rasterio") from exc
    return rasterio


def _feature_box(geometry: dict[str, Any]) -> tuple[float, float, float, float]:
    """(min_x, min_y, max_x, max_y) of a Point (zero size) or Polygon/MultiPolygon."""
    kind = geometry.get("type")
    if kind == "Point":
        x, y = geometry["coordinates"][:2]
        return x, y, x, y
    if kind in ("Polygon", "MultiPolygon"):
        rings = geometry["coordinates"] if kind == "Polygon" else [r for poly in geometry["coordinates"] for r in poly]
        points = np.array([p[:2] for ring in rings for p in ring], dtype=np.float64)
        return (*points.min(axis=0), *points.max(axis=0))
    raise ValueError(f"geometry type {kind!r} is not supported (Point, Polygon, MultiPolygon)")


class GeoTiffSource(Source):
    name: ClassVar[str] = "geotiff"
    Config: ClassVar[type[SourceConfig]] = GeoTiffConfig
    config: GeoTiffConfig   # what `Source.__init__` stores: this source's own config

    @property
    def natural_size(self) -> int | None:
        return self.config.chip_size if self.config.chip_mode == "fixed" else None

    def scene_paths(self) -> list[Path]:
        scenes = Path(self.config.scenes).expanduser()
        if scenes.is_file():
            return [scenes]
        if not scenes.is_dir():
            raise FileNotFoundError(f"data.scenes {str(scenes)!r} is neither a GeoTIFF nor a folder of them")
        return sorted(p for p in scenes.iterdir() if p.suffix.lower() in SCENE_SUFFIXES)

    def annotation_path(self, scene: Path) -> Path:
        folder = Path(self.config.annotations_dir).expanduser() if self.config.annotations_dir else scene.parent
        return folder / f"{scene.stem}.geojson"

    def list_items(self) -> list[SourceItem]:
        rasterio = _rasterio()
        items: list[SourceItem] = []
        for scene in self.scene_paths():
            scene_id = safe_key(scene.stem)
            annotations = self.annotation_path(scene)
            try:
                with rasterio.open(scene) as dataset:
                    crs, transform, width, height = dataset.crs, dataset.transform, dataset.width, dataset.height
            except Exception as exc:  # any rasterio failure means the scene is unusable
                items.append(SourceItem(key=f"{scene_id}/scene", label=None, locator={"scene": str(scene)},
                                        metadata={C.SCENE_ID: scene_id}, reject_reason=C.REJECT_CORRUPT,
                                        reject_detail=f"cannot open scene: {exc}"))
                continue
            if not annotations.is_file():
                items.append(SourceItem(key=f"{scene_id}/annotations", label=None, locator={"scene": str(scene)},
                                        metadata={C.SCENE_ID: scene_id}, reject_reason=C.REJECT_MISSING_LABEL,
                                        reject_detail=f"no annotations at {annotations}"))
                continue
            features = json.loads(annotations.read_text()).get("features", [])
            for index, feature in enumerate(features):
                items.append(self._chip_item(feature, index, scene, scene_id, crs, transform, width, height))
        return items

    def _chip_item(self, feature, index, scene, scene_id, crs, transform, width, height) -> SourceItem:
        rasterio = _rasterio()
        cfg = self.config
        props = feature.get("properties") or {}
        key = f"{scene_id}/{safe_key(str(feature.get('id', f'{index:06d}')))}"
        label = props.get(cfg.class_property)
        item = SourceItem(
            key=key, label=None if label in (None, "") else str(label),
            superclass=(
                str(props[cfg.superclass_property])
                if cfg.superclass_property and props.get(cfg.superclass_property) is not None else None
            ),
            locator={"scene": str(scene)},
            metadata={C.SCENE_ID: scene_id, "crs": str(crs), C.SOURCE: f"{scene.name}#{index}",
                      **{k: v for k, v in props.items() if k not in (cfg.class_property, cfg.superclass_property)}},
        )
        try:
            min_x, min_y, max_x, max_y = _feature_box(feature["geometry"])
        except (KeyError, TypeError, ValueError) as exc:
            item.reject_reason, item.reject_detail = C.REJECT_CORRUPT, f"bad geometry: {exc}"
            return item
        xs, ys = [min_x, max_x, (min_x + max_x) / 2], [min_y, max_y, (min_y + max_y) / 2]
        if cfg.annotation_crs != "scene":
            xs, ys = rasterio.warp.transform(cfg.annotation_crs, crs, xs, ys)
        rows, cols = rasterio.transform.rowcol(transform, xs, ys, op=float)
        center_row, center_col = rows[2], cols[2]
        if cfg.chip_mode == "fixed" or (min_x == max_x and min_y == max_y):  # points have no box
            side_w = side_h = cfg.chip_size
        else:
            pad = 1 + 2 * cfg.box_padding
            side_w = max(4, int(round(abs(cols[1] - cols[0]) * pad)))
            side_h = max(4, int(round(abs(rows[1] - rows[0]) * pad)))
        col_off = int(np.floor(center_col - side_w / 2))
        row_off = int(np.floor(center_row - side_h / 2))
        window = {"col_off": col_off, "row_off": row_off, "width": side_w, "height": side_h}
        lon, lat = rasterio.warp.transform(crs, "EPSG:4326", [xs[2]], [ys[2]]) if crs else ([None], [None])
        item.locator["window"] = window
        item.metadata.update({"window": window, C.LONGITUDE: lon[0], C.LATITUDE: lat[0]})
        if item.label is None:
            item.reject_reason, item.reject_detail = C.REJECT_MISSING_LABEL, f"feature {index} has no {cfg.class_property!r}"
        inside = col_off >= 0 and row_off >= 0 and col_off + side_w <= width and row_off + side_h <= height
        if not inside and cfg.edge == "reject":
            item.reject_reason = item.reject_reason or C.REJECT_OUT_OF_BOUNDS
            item.reject_detail = item.reject_detail or f"window {window} crosses the {width}x{height} scene border"
        return item

    def load(self, item: SourceItem) -> np.ndarray:
        rasterio = _rasterio()
        from rasterio.windows import Window

        w = item.locator["window"]
        window = Window(w["col_off"], w["row_off"], w["width"], w["height"])
        try:
            with rasterio.open(item.locator["scene"]) as dataset:
                bands = list(self.config.bands) if self.config.bands else list(range(1, dataset.count + 1))
                # fill_value only for padding: rasterio also applies it to pixels it considers
                # masked (e.g. where a 4th "alpha" band is 0), which would corrupt real data.
                padding = {"boundless": True, "fill_value": 0} if self.config.edge == "pad" else {}
                array = dataset.read(bands, window=window, **padding)
        except Exception as exc:  # any rasterio read failure means the chip is unreadable: reject it
            raise Rejection(C.REJECT_UNREADABLE, f"{item.locator['scene']}: {exc}") from exc
        array = np.moveaxis(array, 0, -1)  # bands-first → H×W×bands
        if array.dtype != np.uint8:
            array = rescale_to_uint8(array.astype(np.float64))
        return array[:, :, 0] if array.shape[2] == 1 else array
