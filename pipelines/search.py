"""`chipmatch search`: query an index by image file (or embedding), with metadata filters."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from components import constants as C
from components.errors import ConfigError
from components.storage import Store
from components.storage.layout import INDEX_SOURCE_FILENAME

# Columns of a search result shown (and returned), in this order, where the index has them.
RESULT_COLUMNS = ("rank", "score", C.KEY, C.LABEL, C.SPLIT, C.LONGITUDE, C.LATITUDE, C.TIME, C.SCENE_ID)

def embed_image(path: str, source: dict) -> tuple[np.ndarray, np.ndarray]:
    """(chip as the dataset stores it, its embedding) for an image file, embedded through the
    same path as the indexed chips (`components.inference`)."""
    from components.data.decode import decode_image, normalise
    from components.data.records import Rejection
    from components.inference import embed_query_chip, index_tap, load_model

    try:
        with open(path, "rb") as handle:
            chip = normalise(decode_image(handle.read()), source["image"]["size"], source["image"]["channels"])
    except OSError as exc:
        raise FileNotFoundError(f"--image {path!r} cannot be read: {exc.strerror}") from None
    except Rejection as rejection:
        raise ConfigError(f"--image {path!r} is not a usable chip: {rejection}") from None
    embedding = embed_query_chip(load_model(source["model_uri"]), chip, index_tap(source))
    return chip, embedding


def run_search(index_uri: str, image: str | None, embedding: str | None, k: int, search_filter=None,
               grid: str | None = None, query_label: str | None = None, console: Console | None = None) -> dict[str, Any]:
    from components.index import IndexSearcher

    if (image is None) == (embedding is None):
        raise ConfigError("give exactly one of --image PATH or --embedding FILE.npy")
    searcher = IndexSearcher.load(index_uri)
    source = Store(index_uri).read_json(INDEX_SOURCE_FILENAME)
    chip = None
    if image is not None:
        chip, vectors = embed_image(image, source)
        query = image
    else:
        assert embedding is not None   # exactly one of the two, checked above
        vectors = np.load(embedding).reshape(1, -1)
        query = embedding
    [results] = searcher.search(vectors[:1], k=k, search_filter=search_filter)
    if console:
        console.print(render(results, query))
    if grid:
        if chip is None:
            raise ConfigError("--grid needs --image (the query chip is drawn first)")
        write_grid(chip, results, source["dataset"], grid, query_label)
    columns = [c for c in RESULT_COLUMNS if c in results]
    shown = results[columns].astype(object)
    return {"stage": "search", "index": index_uri, "results": shown.where(shown.notna(), None).to_dict(orient="records"),
            "counts": {"results": int(len(results))}, "grid": grid}


def render(results, query: str) -> Table:
    table = Table(title=f"nearest chips to {query}")
    columns = [c for c in RESULT_COLUMNS if c in results]
    for column in columns:
        table.add_column(column, justify="right" if column in ("rank", "score", C.LONGITUDE, C.LATITUDE) else "left")
    for _, row in results.iterrows():
        table.add_row(*[f"{row[c]:.4f}" if c == "score" else ("" if row[c] is None or row[c] != row[c] else str(row[c]))
                        for c in columns])
    return table


def write_grid(chip: np.ndarray, results, dataset_uri: str, path: str, query_label: str | None = None) -> None:
    """The query chip, then the retrieved chips (read back from their shards), framed green
    when they share `query_label` (default: the top result's class) and red otherwise."""
    from components.data.decode import chip_bytes, decode_chip
    from components.data.reader import iter_shard
    from components.data.versions import open_version
    from components.evaluation.plots import retrieval_grid

    version = open_version(dataset_uri)
    wanted = {(row["shard"], row["key"]) for _, row in results.iterrows()}
    pixels = {}
    for shard in sorted({shard for shard, _ in wanted}):
        for raw in iter_shard(version, shard):
            if (shard, raw["__key__"]) in wanted:
                pixels[raw["__key__"]] = decode_chip(chip_bytes(raw))
    retrieved = [pixels[key] for key in results["key"]]
    labels = list(results["label"])
    retrieval_grid([chip], [retrieved], [query_label or labels[0]], [labels], path)
