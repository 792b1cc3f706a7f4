"""Follow the live index pointer: load what it names in full, then swap one reference.

A `ServedIndex` is one generation in service: the searcher (every shard and the metadata
table in memory, sha256-checked against the manifest), the model that embeds query images
(when the index's ``source.json`` names one) and where both came from. It is immutable.

`LiveFollower` holds the current `ServedIndex` in one attribute. A background thread
re-reads ``indexes/<name>/LIVE.json`` through the `Store` every `period_s` seconds; when
the live generation changed it loads the new one completely and only then assigns the
attribute. Assigning a Python attribute is atomic, so a request, which reads the attribute
once and keeps that object until it answers, finishes on the generation it started with,
and every request after the assignment uses the new one: no request fails or mixes two
indexes across a switch. The old generation is freed when its last request lets go of it,
so a replica needs memory for two generations while it switches.

`components.release.live` keeps an index that stopped being live until the pointer has moved
`keep_generations` further, so an index the follower has just resolved is still there to
load. A generation that fails to load (deleted, corrupt) is logged and retried at the next
check; the one in service keeps answering.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from components import constants as C
from components.errors import ConfigError
from components.index import IndexSearcher
from components.release import read_pointer
from components.release.live import LivePointer, pointer_path
from components.serving.query import ResultColumns
from components.storage import Store
from components.storage.layout import INDEX_SOURCE_FILENAME

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedIndex:
    """One generation of the live index, loaded and ready to answer."""

    name: str                       # the live pointer's name (indexes/<name>/LIVE.json)
    sequence: int                   # pointer sequence at which this index became live
    index: str                      # the index directory, relative to the storage root
    index_uri: str
    searcher: IndexSearcher
    model: Any = None               # torch module embedding query images; None: embeddings only
    model_uri: str | None = None
    image: dict[str, Any] | None = None   # the chips' image spec (size, channels) from source.json
    tap: str = C.INDEX_TAP_DEFAULT  # the feature layer the index holds (source.json), for query images
    loaded_at: float = 0.0          # time.time() when loading finished
    # The metadata as result-row columns, derived from `searcher` when the generation is made
    # (at load time, not on a request).
    columns: ResultColumns = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", ResultColumns(self.searcher))   # frozen: set once, here

    def describe(self) -> dict[str, Any]:
        """What /live and every search response say about the generation that answered."""
        manifest = self.searcher.manifest
        return {"name": self.name, "sequence": self.sequence, "index": self.index, "index_uri": self.index_uri,
                "factory": manifest.factory, "num_vectors": int(manifest.num_vectors), "dim": int(manifest.dim),
                "model_uri": self.model_uri, "accepts_images": self.model is not None, "tap": self.tap,
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at))}


def _load_generation(store: Store, pointer: LivePointer, device: str,
                     previous: ServedIndex | None) -> ServedIndex:
    from components.inference import index_tap, load_model

    uri = store.uri_of(pointer.live.index)
    searcher = IndexSearcher.load(uri, device=device)
    index_store = Store(uri)
    source = index_store.read_json(INDEX_SOURCE_FILENAME) if index_store.exists(INDEX_SOURCE_FILENAME) else {}
    model_uri = source.get("model_uri")
    if previous is not None and model_uri is not None and previous.model_uri == model_uri:
        model = previous.model       # same model (an index rebuilt for new imagery): no reload
    else:
        model = load_model(model_uri) if model_uri else None
    return ServedIndex(name=pointer.name, sequence=pointer.live.sequence, index=pointer.live.index, index_uri=uri,
                       searcher=searcher, model=model, model_uri=model_uri, image=source.get("image"),
                       tap=index_tap(source),
                       loaded_at=time.time())


def load_live(store: Store, name: str, device: str = "auto", previous: ServedIndex | None = None) -> ServedIndex:
    """The live generation of `name`, loaded in full; FileNotFoundError when none is live."""
    pointer = read_pointer(store, name)
    if pointer is None:
        raise FileNotFoundError(f"no live index for {name!r}: {store.uri_of(pointer_path(name))} does not exist; "
                                "promote a model (or switch_live an index) before starting the search service")
    return _load_generation(store, pointer, device, previous)


class LiveFollower:
    """The generation in service (`current`) and the thread that keeps it up to date."""

    def __init__(self, root: str, name: str, period_s: float = 2.0, device: str = "auto") -> None:
        self.name = name
        self.device = device
        self.period_s = check_period(period_s)
        self.last_error: str | None = None       # why the newest generation could not be loaded, if so
        self._store = Store(root)
        self.current: ServedIndex = load_live(self._store, name, device)   # no service without a live index
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set_period(self, period_s: float) -> None:
        self.period_s = check_period(period_s)

    def check(self) -> bool:
        """Re-read the pointer once; load and swap in a new generation. True if it swapped."""
        pointer = read_pointer(self._store, self.name)
        current = self.current
        if pointer is None or (pointer.live.index, pointer.live.sequence) == (current.index, current.sequence):
            return False
        served = _load_generation(self._store, pointer, self.device, current)
        self.current = served    # the swap: one reference, atomic
        self.last_error = None
        logger.info("search service %s now answers from %s (sequence %d)", self.name, served.index_uri,
                    served.sequence)
        return True

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._follow, name=f"live-follower-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _follow(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.check()
            except Exception as exc:   # keep serving the current generation; try again next period
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("search service %s: could not load the live index (%s); still answering from "
                               "%s", self.name, self.last_error, self.current.index_uri)


def check_period(period_s: float) -> float:
    if isinstance(period_s, bool) or not isinstance(period_s, (int, float)) or not 0 < period_s <= 3600:
        raise ConfigError(f"poll_seconds (how often the live pointer is re-read) must be a number of seconds in "
                          f"(0, 3600], got {period_s!r}")
    return float(period_s)
