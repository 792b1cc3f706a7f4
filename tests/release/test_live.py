"""The live index pointer: switching, history, pruning, rollback, faults and a concurrent reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.index.manifest import INDEX_MANIFEST_FILENAME
from components.release.live import (
    pointer_path,
    prune_generations,
    read_pointer,
    resolve_live,
    rollback,
    switch_live,
)
from components.storage.store import TEMP_MARKER, Store

REPO = Path(__file__).resolve().parents[2]


def make_index(store: Store, name: str, payload: bytes | None = None) -> str:
    """A stand-in index directory: a shard file, then the manifest last (as the index builder does)."""
    relative = f"indexes/builds/{name}"
    store.write_bytes(f"{relative}/shard-00000-of-00001.faiss", payload or name.encode() * 100)
    store.write_json(f"{relative}/{INDEX_MANIFEST_FILENAME}", {"name": name})
    return store.uri_of(relative)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(str(tmp_path / "root"))


def test_switch_resolve_and_history(store):
    a, b = make_index(store, "a"), make_index(store, "b")
    with pytest.raises(FileNotFoundError, match="no live index for 'vehicles'"):
        resolve_live(store, "vehicles")
    first = switch_live(store, "vehicles", a, keep_generations=3)
    assert resolve_live(store, "vehicles") == a
    assert first.sequence == 1 and first.previous == ()
    second = switch_live(store, "vehicles", b, keep_generations=3)
    assert resolve_live(store, "vehicles") == b
    assert second.sequence == 2
    assert [g.index for g in second.previous] == ["indexes/builds/a"]
    assert second.previous[0].retired_sequence == 2
    # The pointer is stored relative to the root: the same store under another mount resolves.
    assert json.loads(Path(store.path(pointer_path("vehicles"))).read_text())["live"]["index"] == "indexes/builds/b"
    # Switching to what is live already writes nothing.
    before = Path(store.path(pointer_path("vehicles"))).read_bytes()
    assert switch_live(store, "vehicles", b, keep_generations=3).sequence == 2
    assert Path(store.path(pointer_path("vehicles"))).read_bytes() == before


def test_refuses_incomplete_or_outside_indexes(store, tmp_path):
    store.write_bytes("indexes/builds/half/shard-00000-of-00001.faiss", b"x")  # no manifest yet
    with pytest.raises(FileNotFoundError, match="not a complete index"):
        switch_live(store, "vehicles", store.uri_of("indexes/builds/half"), keep_generations=2)
    outside = Store(str(tmp_path / "elsewhere"))
    elsewhere = make_index(outside, "x")
    with pytest.raises(ValueError, match="not below the storage root"):
        switch_live(store, "vehicles", elsewhere, keep_generations=2)
    with pytest.raises(ValueError, match="keep_generations"):
        switch_live(store, "vehicles", make_index(store, "a"), keep_generations=1)
    with pytest.raises(ValueError, match="index name"):
        switch_live(store, "../x", make_index(store, "a"), keep_generations=2)
    assert read_pointer(store, "vehicles") is None


def test_prune_keeps_exactly_the_configured_generations(store):
    names = [f"g{i}" for i in range(6)]
    uris = [make_index(store, n) for n in names]
    for i, uri in enumerate(uris):
        switch_live(store, "vehicles", uri, keep_generations=3)
        alive = [n for n in names[: i + 1] if store.exists(f"indexes/builds/{n}/{INDEX_MANIFEST_FILENAME}")]
        # Slow reference: of the indexes switched to so far, the last three exist, nothing older.
        assert alive == names[max(0, i - 2): i + 1]
        assert not any(store.exists(f"indexes/builds/{n}") for n in names[: max(0, i - 2)])
    pointer = read_pointer(store, "vehicles")
    assert [g.index for g in pointer.previous] == ["indexes/builds/g4", "indexes/builds/g3"]
    # An index the pointer never named is never touched by pruning.
    stray = make_index(store, "stray")
    assert prune_generations(store, "vehicles", keep_generations=2) == [store.uri_of("indexes/builds/g3")]
    assert store.exists("indexes/builds/stray/" + INDEX_MANIFEST_FILENAME) and stray


def test_a_switch_that_may_be_undone_prunes_nothing_until_asked(store):
    """retrain switches with prune=False, moves the aliases, then prunes: an undone switch
    (rollback) must find every generation it had."""
    uris = [make_index(store, f"g{i}") for i in range(4)]
    for uri in uris[:3]:
        switch_live(store, "vehicles", uri, keep_generations=2)
    assert [store.exists(f"indexes/builds/g{i}") for i in range(3)] == [False, True, True]
    switch_live(store, "vehicles", uris[3], keep_generations=2, prune=False)
    assert store.exists("indexes/builds/g1/" + INDEX_MANIFEST_FILENAME)     # would have been pruned
    assert rollback(store, "vehicles").live.index == "indexes/builds/g2"    # undone: g1 is still previous
    assert [g.index for g in read_pointer(store, "vehicles").previous] == ["indexes/builds/g1"]
    switch_live(store, "vehicles", uris[3], keep_generations=2, prune=False)
    assert prune_generations(store, "vehicles", keep_generations=2) == [store.uri_of("indexes/builds/g1")]


def test_keep_two_never_deletes_live_or_previous(store):
    uris = [make_index(store, f"g{i}") for i in range(4)]
    for uri in uris:
        switch_live(store, "vehicles", uri, keep_generations=2)
    assert [store.exists(f"indexes/builds/g{i}") for i in range(4)] == [False, False, True, True]


def test_rollback_and_its_retention(store):
    a, b, c = (make_index(store, n) for n in "abc")
    for uri in (a, b, c):
        switch_live(store, "vehicles", uri, keep_generations=3)
    pointer = rollback(store, "vehicles")
    assert resolve_live(store, "vehicles") == b
    assert [g.index for g in pointer.previous] == ["indexes/builds/a"]
    assert [g.index for g in pointer.retired] == ["indexes/builds/c"]
    assert store.exists("indexes/builds/c/" + INDEX_MANIFEST_FILENAME)  # kept: just rolled back from
    rollback(store, "vehicles")
    assert resolve_live(store, "vehicles") == a
    with pytest.raises(ValueError, match="no previous generation"):
        rollback(store, "vehicles")
    # c stopped being live at sequence 4; with keep=3 it goes once the pointer reaches 6.
    d = make_index(store, "d")
    switch_live(store, "vehicles", d, keep_generations=3)  # sequence 6
    assert not store.exists("indexes/builds/c")
    assert store.exists("indexes/builds/b/" + INDEX_MANIFEST_FILENAME)  # retired at 5: kept until 7
    with pytest.raises(FileNotFoundError, match="nothing to roll back"):
        rollback(store, "other")


def test_rollback_refuses_a_previous_index_that_is_gone(store):
    a, b = make_index(store, "a"), make_index(store, "b")
    switch_live(store, "vehicles", a, keep_generations=2)
    switch_live(store, "vehicles", b, keep_generations=2)
    store.delete("indexes/builds/a/" + INDEX_MANIFEST_FILENAME)
    before = Path(store.path(pointer_path("vehicles"))).read_bytes()
    with pytest.raises(FileNotFoundError, match="not a complete index"):
        rollback(store, "vehicles")
    assert Path(store.path(pointer_path("vehicles"))).read_bytes() == before


class FaultyFS:
    """Delegates to a pyarrow filesystem; raises on the chosen operation (the crash point)."""

    def __init__(self, fs, fail_on: str, when=lambda *args: True):
        self._fs, self._fail_on, self._when = fs, fail_on, when

    def __getattr__(self, attribute):
        real = getattr(self._fs, attribute)
        if attribute != self._fail_on:
            return real

        def failing(*args, **kwargs):
            if self._when(*args):
                raise OSError(f"injected failure in {attribute}{args}")
            return real(*args, **kwargs)
        return failing


def test_fault_between_index_build_and_switch_leaves_everything(store, tmp_path):
    a = make_index(store, "a")
    switch_live(store, "vehicles", a, keep_generations=2)
    root = tmp_path / "root"
    before = tree_bytes(root)

    def retrain(fail: bool):
        b = make_index(store, "b")          # the new index is built completely ...
        if fail:
            raise RuntimeError("killed before the switch")
        switch_live(store, "vehicles", b, keep_generations=2)

    with pytest.raises(RuntimeError):
        retrain(fail=True)
    after = tree_bytes(root)
    assert {k: v for k, v in after.items() if not k.startswith("indexes/builds/b/")} == before
    assert resolve_live(store, "vehicles") == a
    retrain(fail=False)  # a re-run completes
    assert resolve_live(store, "vehicles") == store.uri_of("indexes/builds/b")


@pytest.mark.parametrize("fail_on", ["move", "open_output_stream"])
def test_fault_inside_the_pointer_write_keeps_the_old_pointer(store, tmp_path, fail_on):
    a, b = make_index(store, "a"), make_index(store, "b")
    switch_live(store, "vehicles", a, keep_generations=2)
    root = tmp_path / "root"
    before = tree_bytes(root)
    real_fs = store.fs
    store.fs = FaultyFS(real_fs, fail_on, when=lambda *args: "LIVE.json" in str(args[0]))
    with pytest.raises(OSError, match="injected"):
        switch_live(store, "vehicles", b, keep_generations=2)
    store.fs = real_fs
    after = {k: v for k, v in tree_bytes(root).items() if TEMP_MARKER not in k}
    assert after == before  # old pointer and both indexes byte for byte
    assert resolve_live(store, "vehicles") == a
    assert store.remove_temporaries("indexes") <= 1
    assert switch_live(store, "vehicles", b, keep_generations=2).live.index == "indexes/builds/b"


def test_fault_during_prune_is_finished_by_the_next_prune(store):
    uris = [make_index(store, f"g{i}") for i in range(3)]
    switch_live(store, "vehicles", uris[0], keep_generations=2)
    switch_live(store, "vehicles", uris[1], keep_generations=2)
    real_fs = store.fs
    store.fs = FaultyFS(real_fs, "delete_file", when=lambda path: "/g0/" in path and "shard" in path)
    with pytest.raises(OSError, match="injected"):
        switch_live(store, "vehicles", uris[2], keep_generations=2)
    store.fs = real_fs
    # The switch itself is done; g0 lost its manifest first, so no reader takes it for an index.
    assert resolve_live(store, "vehicles") == uris[2]
    assert not store.exists("indexes/builds/g0/" + INDEX_MANIFEST_FILENAME)
    assert [g.index for g in read_pointer(store, "vehicles").previous] == ["indexes/builds/g1", "indexes/builds/g0"]
    assert prune_generations(store, "vehicles", keep_generations=2) == [store.uri_of("indexes/builds/g0")]
    assert not store.exists("indexes/builds/g0")
    assert [g.index for g in read_pointer(store, "vehicles").previous] == ["indexes/builds/g1"]


READER = r"""
import json, sys, time
from components.index.manifest import INDEX_MANIFEST_FILENAME
from components.release.live import pointer_path, read_pointer
from components.storage.store import Store
store, name, keep, stop = Store(sys.argv[1]), "vehicles", int(sys.argv[2]), sys.argv[3]
raw_path = store.path(pointer_path(name))
import os
reads = late = 0
errors = []
sequences = set()
while not os.path.exists(stop):
    try:
        with open(raw_path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        if reads:
            errors.append("the pointer vanished during a switch")  # the rename must replace in place
        continue
    try:
        data = json.loads(raw)          # never half a pointer
    except ValueError as exc:
        errors.append(f"partial pointer: {exc}: {raw[:80]!r}")
        continue
    try:
        pointer = read_pointer(store, name)   # the reader a search service uses
        if pointer is None:
            errors.append("read_pointer found no pointer during a switch")
            continue
        sequences.add(pointer.sequence)
        exists = store.exists(f"{pointer.live.index}/{INDEX_MANIFEST_FILENAME}")
        now = exists or read_pointer(store, name).sequence
    except ValueError as exc:
        errors.append(f"partial pointer: {exc}")
        continue
    if not exists:
        # Allowed only when the pointer moved on by keep_generations writes since this read.
        if now < pointer.sequence + keep:
            errors.append(f"live index {pointer.live.index} (sequence {pointer.sequence}) missing at {now}")
        late += 1
    reads += 1
print(json.dumps({"reads": reads, "late": late, "errors": errors[:5], "sequences": len(sequences)}))
"""


def test_concurrent_reader_always_sees_a_complete_pointer_to_an_existing_index(store, tmp_path):
    keep = 2
    switch_live(store, "vehicles", make_index(store, "g0"), keep_generations=keep)
    stop = tmp_path / "stop"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    reader = subprocess.Popen([sys.executable, "-c", READER, store.uri, str(keep), str(stop)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        time.sleep(1.0)  # the reader is importing and reading before the switches start
        for i in range(1, 61):
            switch_live(store, "vehicles", make_index(store, f"g{i}", payload=os.urandom(64 * 1024)),
                        keep_generations=keep)
            if i % 7 == 0:
                rollback(store, "vehicles")
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    result = json.loads(out)
    print("concurrent reader:", result)
    assert result["errors"] == []
    assert result["reads"] > 100 and result["sequences"] > 5, result


def test_index_uri_forms(store):
    from components.release.live import _relative_index

    assert _relative_index(store, store.uri_of("indexes/builds/a")) == "indexes/builds/a"
    assert _relative_index(store, "indexes/builds/a/") == "indexes/builds/a"
    assert _relative_index(store, "file://" + store.uri_of("indexes/builds/a")) == "indexes/builds/a"
    for bad in ("../outside", store.uri, store.uri + "/../x", "s3://bucket/indexes/a"):
        with pytest.raises(ValueError, match="storage root"):
            _relative_index(store, bad)


def test_s3_root_uris_are_matched_without_touching_the_bucket():
    from components.release.live import _relative_index

    class S3Like:  # what Store holds for s3://bucket/chipmatch, without a network connection
        uri, root = "s3://bucket/chipmatch", "bucket/chipmatch"

    assert _relative_index(S3Like, "s3://bucket/chipmatch/indexes/v/x") == "indexes/v/x"
    with pytest.raises(ValueError, match="not below the storage root"):
        _relative_index(S3Like, "s3://other/chipmatch/indexes/v/x")


def test_the_pointer_lives_where_the_layout_says(store):
    from components.storage import Layout

    switch_live(store, "vehicles", make_index(store, "a"), keep_generations=2)
    assert store.exists(Layout.live_index("vehicles")) and pointer_path("vehicles") == Layout.live_index("vehicles")
    with pytest.raises(ValueError, match="one"):
        pointer_path("a/b")   # the name is still checked before the layout builds the path
