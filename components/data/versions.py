"""Dataset versions on the store: how to find and open one.

Where they live (`components.storage.layout`)::

    shards/<split>-<content hash>.tar          shared by every version that holds them
    datasets/<name>/<version>/manifest.json    one per version, written last and atomically
    datasets/<name>/LATEST.json                the newest version (the parent of the next one)

A version exists if and only if its manifest exists: shards written by a run that crashed
before the manifest are complete but unreferenced, and are reused by the next run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components import constants as C
from components.storage import Layout, Store


def latest_version(store: Store, dataset: str) -> str | None:
    if not store.exists(Layout.latest(dataset)):
        return None
    return store.read_json(Layout.latest(dataset))["version"]


def protocol(manifest: dict[str, Any]) -> str:
    """The split protocol a version was made with (manifests older than protocols: ``classes``)."""
    return manifest.get("protocol", C.PROTOCOL_CLASSES)


def retrieval_split(manifest: dict[str, Any]) -> str:
    """The split retrieval is measured on: ``unseen`` (protocol classes) or ``test`` (protocol
    images). Evaluation and indexing call this instead of assuming ``unseen``; manifests older
    than protocols have no such key and are class-disjoint."""
    return manifest.get("retrieval_split", C.SPLIT_UNSEEN)


def list_versions(store: Store, dataset: str) -> list[str]:
    """Published versions (those with a manifest) of `dataset`."""
    return [v for v in store.list_dirs(Layout.dataset_versions(dataset)) if store.exists(Layout.manifest(dataset, v))]


@dataclass
class DatasetVersion:
    """A published dataset version: its manifest and the store its shards live in."""

    store: Store
    manifest: dict[str, Any]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def dataset(self) -> str:
        return self.manifest["dataset"]

    @property
    def uri(self) -> str:
        return self.store.uri_of(Layout.manifest(self.dataset, self.version))

    @property
    def protocol(self) -> str:
        return protocol(self.manifest)

    @property
    def retrieval_split(self) -> str:
        return retrieval_split(self.manifest)

    def classes(self, split: str) -> list[str]:
        """Class names of a split in label-index order: train, val and test (held-out images of
        trained classes) share the seen classes, so a classifier's indices mean the same in all."""
        if split not in C.SPLITS:
            raise ValueError(f"split {split!r} is unknown; valid choices: {list(C.SPLITS)}")
        key = "unseen_classes" if split == C.SPLIT_UNSEEN else "seen_classes"
        return list(self.manifest["split"][key])

    def shards(self, split: str) -> list[dict[str, Any]]:
        if split not in C.SPLITS:
            raise ValueError(f"split {split!r} is unknown; valid choices: {list(C.SPLITS)}")
        return [s for s in self.manifest["shards"] if s["split"] == split]

    def num_samples(self, split: str) -> int:
        return sum(s["count"] for s in self.shards(split))


def open_version(uri: str) -> DatasetVersion:
    """Open a version from the URI of its manifest (or of its folder)."""
    root, relative = Layout.split_manifest_uri(uri)
    store = Store(root)
    if not store.exists(relative):
        raise FileNotFoundError(f"no published dataset version at {store.uri_of(relative)} (the manifest is missing)")
    return DatasetVersion(store=store, manifest=store.read_json(relative))
