"""The storage-root lock, with real processes contending for it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from components.release.lock import LockBusy, LockOwner, StorageLock, retrain_lock
from components.storage.store import Store

REPO = Path(__file__).resolve().parents[2]

# One process: take the lock (waiting up to WAIT s), note when, hold it HOLD s, release, note when.
HOLDER = r"""
import json, sys, time
from components.release.lock import LockBusy, StorageLock
from components.storage.store import Store
root, wait, hold, out, ready = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
lock = StorageLock(Store(root), "retrain", wait=wait, poll=0.05, stale_after=60, purpose="test")
try:
    lock.acquire()
except LockBusy as exc:
    print(str(exc), file=sys.stderr)
    sys.exit(3)
start = time.time()
open(ready, "w").close()
time.sleep(hold)
end = time.time()
lock.release()
json.dump({"start": start, "end": end}, open(out, "w"))
"""

# Several processes increment a counter under the lock, with a read-sleep-write race window.
COUNTER = r"""
import json, os, sys, time
from components.release.lock import StorageLock
from components.storage.store import Store
root, rounds, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
store = Store(root)
spans = []
for _ in range(rounds):
    with StorageLock(store, "retrain", wait=120, poll=0.02, stale_after=60):
        start = time.time()
        value = int(store.read_bytes("counter")) if store.exists("counter") else 0
        time.sleep(0.02)
        store.write_bytes("counter", str(value + 1).encode())
        spans.append((start, time.time()))
json.dump(spans, open(out, "w"))
"""


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _start(script: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.02)


def test_second_process_waits_for_the_first(tmp_path):
    root = tmp_path / "root"
    first = _start(HOLDER, root, 0, 1.5, tmp_path / "a.json", tmp_path / "a.ready")
    _wait_for(tmp_path / "a.ready")
    second = _start(HOLDER, root, 30, 0.1, tmp_path / "b.json", tmp_path / "b.ready")
    assert first.wait(60) == 0, first.stderr.read()
    assert second.wait(60) == 0, second.stderr.read()
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["start"] >= a["end"]  # the second held it only after the first let go
    assert Store(str(root)).list("locks/retrain") == []  # released: no claim left behind


def test_second_process_fails_naming_the_holder(tmp_path):
    root = tmp_path / "root"
    first = _start(HOLDER, root, 0, 5, tmp_path / "a.json", tmp_path / "a.ready")
    try:
        _wait_for(tmp_path / "a.ready")
        started = time.monotonic()
        second = _start(HOLDER, root, 0.5, 0, tmp_path / "b.json", tmp_path / "b.ready")
        assert second.wait(60) == 3
        message = second.stderr.read()
        assert time.monotonic() - started < 20
        assert f"pid {first.pid}" in message and "(test)" in message and "is held by host" in message
        assert "waited 0 s" in message or "waited 1 s" in message
        assert not (tmp_path / "b.ready").exists()
    finally:
        first.kill()
        first.wait()


def test_mutual_exclusion_under_contention(tmp_path):
    root = tmp_path / "root"
    workers = [_start(COUNTER, root, 4, tmp_path / f"w{i}.json") for i in range(3)]
    for worker in workers:
        assert worker.wait(120) == 0, worker.stderr.read()
    assert Store(str(root)).read_bytes("counter") == b"12"  # no lost update
    spans = sorted(span for i in range(3) for span in json.loads((tmp_path / f"w{i}.json").read_text()))
    assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:]))  # never overlapping


def _plant_claim(store: Store, owner: LockOwner) -> str:
    path = f"locks/retrain/{int(owner.acquired_at * 1e9):020d}-{owner.token}.json"
    store.write_json(path, asdict(owner))
    return path


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_lock_of_a_dead_owner_is_broken_with_a_message(tmp_path, caplog):
    store = Store(str(tmp_path / "root"))
    lock = StorageLock(store, "retrain", stale_after=10)
    old = time.time() - 60
    pid = _dead_pid()
    planted = _plant_claim(store, LockOwner(lock.host, pid, "deadbeef", old, old, True, "retrain"))
    with caplog.at_level(logging.WARNING, logger="components.release.lock"):
        with lock:
            assert not store.exists(planted)
            assert lock.owner.held and lock.owner.pid == os.getpid()
    assert f"pid {pid}" in caplog.text and "breaking stale lock" in caplog.text


def test_old_lock_of_a_live_owner_or_a_fresh_one_is_not_broken(tmp_path):
    store = Store(str(tmp_path / "root"))
    lock = StorageLock(store, "retrain", stale_after=10)
    old = time.time() - 60
    # Same host, pid alive (this very process's parent): its owner is not gone.
    alive = _plant_claim(store, LockOwner(lock.host, os.getppid(), "a1", old, old, True))
    with pytest.raises(LockBusy, match=f"pid {os.getppid()}") as caught:
        lock.acquire()
    assert caught.value.holder.pid == os.getppid()
    store.delete(alive)
    # Dead pid but a recent refresh: younger than the timeout, so kept.
    recent = time.time() - 1
    _plant_claim(store, LockOwner(lock.host, _dead_pid(), "b2", recent, recent, True))
    with pytest.raises(LockBusy):
        lock.acquire()


def test_other_host_lock_is_broken_only_after_the_timeout(tmp_path):
    store = Store(str(tmp_path / "root"))
    recent = time.time() - 2
    fresh = _plant_claim(store, LockOwner("node-b", 1, "c3", recent, recent, True))
    with pytest.raises(LockBusy, match="host node-b"):
        StorageLock(store, "retrain", stale_after=10).acquire()
    store.delete(fresh)
    old = time.time() - 30
    _plant_claim(store, LockOwner("node-b", 1, "d4", old, old, True))
    with StorageLock(store, "retrain", stale_after=10) as lock:
        assert lock.owner.host != "node-b"


def test_a_holder_keeps_its_lock_fresh(tmp_path):
    """A holder on 'another host' (so only the refresh time speaks for it) outlives stale_after."""
    store = Store(str(tmp_path / "root"))
    with StorageLock(store, "retrain", stale_after=0.4, host="node-a") as holder:
        time.sleep(1.2)  # three times the timeout
        with pytest.raises(LockBusy, match="host node-a"):
            StorageLock(store, "retrain", stale_after=0.4, host="node-b").acquire()
        assert holder.owner.heartbeat_at > holder.owner.acquired_at
    assert store.list("locks/retrain") == []


def test_bad_arguments_name_the_key(tmp_path):
    store = Store(str(tmp_path / "root"))
    with pytest.raises(ValueError, match="wait"):
        StorageLock(store, wait=-1)
    with pytest.raises(ValueError, match="stale_after"):
        StorageLock(store, stale_after=0)
    with pytest.raises(ValueError, match="lock name"):
        StorageLock(store, "a/b")
    lock = retrain_lock(store)
    with lock:
        with pytest.raises(RuntimeError, match="already held"):
            lock.acquire()


def test_a_failure_while_acquiring_leaves_no_claim_behind(tmp_path, monkeypatch):
    store = Store(str(tmp_path / "root"))
    lock = StorageLock(store, "retrain")
    monkeypatch.setattr(lock, "_claims", lambda: (_ for _ in ()).throw(OSError("listing failed")))
    with pytest.raises(OSError, match="listing failed"):
        lock.acquire()
    assert store.list("locks/retrain") == [] and lock.owner is None
    monkeypatch.undo()
    with StorageLock(store, "retrain"):  # nothing blocks the next acquirer
        pass


def test_claims_live_in_the_layouts_lock_folder(tmp_path):
    from components.storage import Layout

    store = Store(str(tmp_path / "root"))
    with StorageLock(store, "retrain") as holder:
        claims = store.list(Layout.lock_claims("retrain"))
        assert len(claims) == 1 and claims[0].endswith(".json") and holder.owner is not None
    assert store.list(Layout.lock_claims("retrain")) == []
