"""The live index pointer: which index answers searches for `<name>`.

``indexes/<name>/LIVE.json`` is one small JSON file written through `Store.write_json`
(temporary name, then a rename into place; one PUT on object stores), so a reader sees the
old pointer or the new one, never half of either. Switching is the *last* step of a
promotion: the new index is complete (its ``index.json`` manifest exists) before the pointer
names it, and an exception anywhere before the rename leaves pointer and indexes as they were.

The pointer also carries the history, so pointer and history can never disagree:

- ``live``: the index in service;
- ``previous``: indexes that were live before, newest first; ``previous[0]`` is what
  `rollback` returns to;
- ``retired``: indexes rolled back *from*, kept until they are old enough to delete.

Every write of the pointer (switch or rollback) increments ``sequence``. An index that
stopped being live at sequence ``r`` is deleted by `prune_generations` once the pointer has
reached ``r + keep_generations - 1``, and never while it is live or ``previous[0]``. So a
reader that saw index X live at sequence ``s`` can rely on X existing until the pointer
reaches ``s + keep_generations`` -- enough for a search service to load it after resolving.

Writers must hold the retrain lock (`components.release.lock`): the pointer is replaced
whole, so two unsynchronised writers would lose one another's history.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from components.index.manifest import INDEX_MANIFEST_FILENAME
from components.storage.layout import LIVE_FILENAME as LIVE_FILENAME  # importable from here too
from components.storage.layout import Layout
from components.storage.store import Store

POINTER_FORMAT = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    index: str                          # the index directory, relative to the storage root
    sequence: int                       # pointer sequence at which it became live
    switched_at: str                    # UTC time it became live (ISO 8601)
    retired_sequence: int | None = None  # pointer sequence at which it stopped being live


@dataclass(frozen=True)
class LivePointer:
    name: str
    sequence: int
    live: Generation
    previous: tuple[Generation, ...] = ()
    retired: tuple[Generation, ...] = ()
    format: int = POINTER_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str) -> "LivePointer":
        try:
            if data.get("format") != POINTER_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, this code reads {POINTER_FORMAT}")
            return cls(
                name=data["name"],
                sequence=int(data["sequence"]),
                live=Generation(**data["live"]),
                previous=tuple(Generation(**g) for g in data.get("previous", [])),
                retired=tuple(Generation(**g) for g in data.get("retired", [])),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source} is not a live index pointer ({exc!r}); restore it from the "
                             "history of a previous pointer or switch again with switch_live") from None


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"index name {name!r} must be one path segment of letters, digits, '.', '_' "
                         "or '-' (it becomes indexes/<name>/LIVE.json)")


def _check_keep(keep_generations: int) -> None:
    if isinstance(keep_generations, bool) or not isinstance(keep_generations, int) or keep_generations < 2:
        raise ValueError(f"keep_generations must be an integer >= 2 (the live index and the previous "
                         f"one are always kept), got {keep_generations!r}")


def pointer_path(name: str) -> str:
    """The live pointer of `name` (`Layout.live_index`), after checking the name is one segment."""
    _check_name(name)
    return Layout.live_index(name)


def _relative_index(store: Store, index_uri: str) -> str:
    """The index directory relative to the storage root: the pointer stays valid when the root
    is mounted elsewhere, and pruning can only ever delete below the root. Decided on the
    strings alone (no filesystem call: opening an s3:// URI may look up the bucket's region)."""
    if not isinstance(index_uri, str) or not index_uri:
        raise ValueError(f"index_uri must be a non-empty path or URI, got {index_uri!r}")
    local = "://" not in store.uri
    candidate = index_uri[len("file://"):] if local and index_uri.startswith("file://") else index_uri
    if "://" not in candidate and not candidate.startswith("/"):
        relative = candidate                                   # already relative to the root
    else:
        base = (store.root if local else store.uri).rstrip("/") + "/"
        if local:
            candidate = posixpath.normpath(candidate)
        if not candidate.startswith(base):
            raise ValueError(f"index_uri {index_uri!r} is not below the storage root {store.uri!r}; "
                             "build the index under storage.root (indexes/...)")
        relative = candidate[len(base):]
    relative = posixpath.normpath(relative)
    if relative in ("", ".", "..") or relative.startswith("../") or relative.startswith("/"):
        raise ValueError(f"index_uri {index_uri!r} must name a directory below the storage root {store.uri!r}")
    return relative


def _require_complete(store: Store, index: str) -> None:
    manifest = f"{index}/{INDEX_MANIFEST_FILENAME}"
    if not store.exists(manifest):
        raise FileNotFoundError(f"{store.uri_of(index)} is not a complete index (no {INDEX_MANIFEST_FILENAME}); "
                                "build it completely before making it live")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_pointer(store: Store, name: str) -> LivePointer | None:
    """The current pointer, or None when `name` has never been switched live."""
    path = pointer_path(name)
    try:
        data = store.read_json(path)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{store.uri_of(path)} is not valid JSON ({exc})") from None
    return LivePointer.from_dict(data, store.uri_of(path))


def resolve_live(store: Store, name: str) -> str:
    """The URI of the index in service for `name` (what `chipmatch search` opens)."""
    pointer = read_pointer(store, name)
    if pointer is None:
        raise FileNotFoundError(f"no live index for {name!r}: {store.uri_of(pointer_path(name))} does not "
                                "exist; promote a model (or switch_live an index) first, or pass --index")
    return store.uri_of(pointer.live.index)


def _write(store: Store, pointer: LivePointer) -> None:
    store.write_json(pointer_path(pointer.name), pointer.to_dict())


def switch_live(store: Store, name: str, index_uri: str, *, keep_generations: int, prune: bool = True) -> LivePointer:
    """Make `index_uri` (a complete index below the storage root) the live index of `name`.

    The pointer is written last, in one atomic rename; afterwards generations older than
    `keep_generations` are pruned (unless `prune` is False: a caller that may still undo the
    switch prunes once the switch is final). Switching to the index that is already live
    changes nothing.
    """
    _check_name(name)
    _check_keep(keep_generations)
    index = _relative_index(store, index_uri)
    _require_complete(store, index)
    current = read_pointer(store, name)
    if current is not None and current.live.index == index:
        if prune:
            prune_generations(store, name, keep_generations=keep_generations)
        return _reread(store, name)
    if current is None:
        pointer = LivePointer(name=name, sequence=1, live=Generation(index, 1, _now()))
    else:
        sequence = current.sequence + 1
        # A re-promoted index appears once: as live, not also in the history.
        previous = (replace(current.live, retired_sequence=sequence),) + current.previous
        pointer = LivePointer(
            name=name,
            sequence=sequence,
            live=Generation(index, sequence, _now()),
            previous=tuple(g for g in previous if g.index != index),
            retired=tuple(g for g in current.retired if g.index != index),
        )
    _write(store, pointer)
    logger.info("live index %s -> %s (sequence %d)", name, store.uri_of(index), pointer.sequence)
    if prune:
        prune_generations(store, name, keep_generations=keep_generations)
    return _reread(store, name)


def _reread(store: Store, name: str) -> LivePointer:
    pointer = read_pointer(store, name)
    if pointer is None:  # only when someone deleted it behind our back
        raise FileNotFoundError(f"{store.uri_of(pointer_path(name))} vanished right after it was written")
    return pointer


def rollback(store: Store, name: str) -> LivePointer:
    """Put the previous generation back in service (one atomic rename, like a switch). The
    index rolled back from is kept as `retired` until pruning finds it old enough."""
    current = read_pointer(store, name)
    if current is None:
        raise FileNotFoundError(f"no live index for {name!r} ({store.uri_of(pointer_path(name))} does not "
                                "exist): nothing to roll back")
    if not current.previous:
        raise ValueError(f"the live index of {name!r} ({store.uri_of(current.live.index)}) has no previous "
                         "generation to roll back to")
    target = current.previous[0]
    _require_complete(store, target.index)
    sequence = current.sequence + 1
    pointer = LivePointer(
        name=name,
        sequence=sequence,
        live=Generation(target.index, sequence, _now()),
        previous=current.previous[1:],
        retired=(replace(current.live, retired_sequence=sequence),) + current.retired,
    )
    _write(store, pointer)
    logger.info("live index %s rolled back to %s (sequence %d)", name, store.uri_of(target.index), sequence)
    return pointer


def _delete_index(store: Store, index: str) -> None:
    """Manifest first, so that a reader sees an incomplete index rather than a partial one."""
    manifest = f"{index}/{INDEX_MANIFEST_FILENAME}"
    if store.exists(manifest):
        store.delete(manifest)
    for path in store.list(index, recursive=True):
        store.delete(path)
    if store.exists(index):  # empty directories of local and hierarchical filesystems
        store.fs.delete_dir(store.path(index))


def prune_generations(store: Store, name: str, *, keep_generations: int) -> list[str]:
    """Delete the indexes that stopped being live `keep_generations - 1` or more pointer writes
    ago; returns their URIs. Never deletes the live index, ``previous[0]``, or anything the
    pointer does not name. Index bytes go first and the pointer is rewritten after, so an
    interrupted prune is finished by the next one (deleting an absent index is a no-op)."""
    _check_keep(keep_generations)
    current = read_pointer(store, name)
    if current is None:
        return []

    def due(generation: Generation) -> bool:
        # A record without its retirement sequence (hand-edited) counts as retired just now: kept.
        retired = current.sequence if generation.retired_sequence is None else generation.retired_sequence
        return current.sequence - retired >= keep_generations - 1

    candidates = list(current.previous[1:]) + list(current.retired)
    protected = {current.live.index} | {g.index for g in current.previous[:1]}
    protected |= {g.index for g in candidates if not due(g)}
    doomed = [g for g in candidates if due(g) and g.index not in protected]
    if not doomed:
        return []
    for generation in doomed:
        _delete_index(store, generation.index)
        logger.info("pruned index %s of %s (stopped being live at sequence %d, now %d)",
                    store.uri_of(generation.index), name, generation.retired_sequence, current.sequence)
    gone = {g.index for g in doomed}
    _write(store, replace(
        current,
        previous=current.previous[:1] + tuple(g for g in current.previous[1:] if g.index not in gone),
        retired=tuple(g for g in current.retired if g.index not in gone),
    ))
    return [store.uri_of(index) for index in sorted(gone)]
