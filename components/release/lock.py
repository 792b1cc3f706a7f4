"""A lock on the storage root: at most one retrain (or promote / rollback) at a time.

The lock must work wherever the storage root is -- a local disk, NFS, or an object store --
and `Store` offers no exclusive create (object stores have no portable one through pyarrow).
So the lock uses only what every backend offers: atomic whole-file writes, listing and delete,
with strongly consistent listing (local filesystems, S3 and GCS all give it):

1. an acquirer writes its own *claim* file ``locks/<name>/<time>-<token>.json`` (owner host,
   pid, time);
2. it lists the claims: when no other live claim is there, it holds the lock; otherwise it
   deletes its claim and waits.

Two acquirers can never both hold it: whichever lists last sees the other's claim, which was
written before the other listed. When two contenders see each other both back off for a
random moment and try again. A holder marks its claim ``held`` (for the messages of those
who wait) and refreshes it every `stale_after / 4` seconds, so a claim whose refresh is older
than `stale_after` belongs to an owner that is gone: when its pid no longer runs on this host,
or it was taken on another host (whose processes cannot be checked from here), the claim is
broken with a logged warning.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from components.storage.layout import LOCKS_DIR as LOCKS_DIR  # importable from here too
from components.storage.layout import Layout
from components.storage.store import TEMP_MARKER, Store

logger = logging.getLogger(__name__)
_CONTENTION_ROUNDS = 20  # tries spent on mere contention (no holder) even when wait=0


class LockBusy(TimeoutError):
    """The lock is held by another owner and did not come free in time."""

    def __init__(self, message: str, holder: "LockOwner | None"):
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True)
class LockOwner:
    host: str
    pid: int
    token: str
    acquired_at: float      # epoch seconds when the claim was first written
    heartbeat_at: float     # epoch seconds of the last refresh
    held: bool = False      # False while still contending
    purpose: str = ""

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.acquired_at))
        what = f" ({self.purpose})" if self.purpose else ""
        return f"host {self.host} pid {self.pid}{what} since {since}"


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


class StorageLock:
    """``with StorageLock(store, "retrain", wait=600): ...`` -- see the module docstring.

    `stale_after`: seconds without a refresh after which an owner that is gone loses the lock.
    `wait`: seconds to wait for a holder to release before `LockBusy` (0: fail at once).
    `host`: the name recorded as owner (default: this machine's hostname); containers that
    share a hostname should pass something unique, e.g. the pod name.
    """

    def __init__(self, store: Store, name: str = "retrain", *, stale_after: float = 3600.0,
                 wait: float = 0.0, poll: float = 1.0, purpose: str = "", host: str | None = None):
        for key, value in (("stale_after", stale_after), ("wait", wait), ("poll", poll)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"lock {key} must be a number of seconds >= 0, got {value!r}")
        if stale_after <= 0 or poll <= 0:
            raise ValueError(f"lock stale_after and poll must be > 0, got {stale_after!r} and {poll!r}")
        if not name or "/" in name:
            raise ValueError(f"lock name {name!r} must be one non-empty path segment, e.g. 'retrain'")
        self.store = store
        self.name = name
        self.stale_after = float(stale_after)
        self.wait = float(wait)
        self.poll = float(poll)
        self.purpose = purpose
        self.host = host or socket.gethostname()
        self.directory = Layout.lock_claims(name)
        self._claim: str | None = None
        self._owner: LockOwner | None = None
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._heartbeat: threading.Thread | None = None

    # -- claims ---------------------------------------------------------------------------
    def _claims(self) -> dict[str, LockOwner | None]:
        claims: dict[str, LockOwner | None] = {}
        for path in self.store.list(self.directory):
            if not path.endswith(".json") or TEMP_MARKER in path:
                continue  # debris of an interrupted atomic write is no claim
            try:
                claims[path] = LockOwner(**self.store.read_json(path))
            except FileNotFoundError:
                continue  # released between listing and reading
            except (TypeError, ValueError) as exc:
                logger.warning("lock claim %s is unreadable (%s)", self.store.uri_of(path), exc)
                claims[path] = None
        return claims

    def _live_claims_of_others(self) -> dict[str, LockOwner | None]:
        live = {}
        for path, owner in self._claims().items():
            if path == self._claim:
                continue
            if owner is not None and self._is_stale(owner):
                logger.warning("breaking stale lock %s held by %s: no refresh for %.0f s (stale_after=%.0f s) "
                               "and its owner is gone", self.store.uri_of(path), owner.describe(),
                               time.time() - owner.heartbeat_at, self.stale_after)
                self._delete_quietly(path)
            else:
                live[path] = owner
        return live

    def _is_stale(self, owner: LockOwner) -> bool:
        if time.time() - owner.heartbeat_at <= self.stale_after:
            return False
        if owner.host == self.host:
            return not _pid_running(owner.pid)
        return True  # another host: its pid cannot be checked; a live owner would have refreshed

    def _write_claim(self, claim: str, owner: LockOwner) -> None:
        self.store.write_json(claim, asdict(owner))

    # -- acquire / release ----------------------------------------------------------------
    def acquire(self) -> LockOwner:
        if self._owner is not None:
            raise RuntimeError(f"lock {self.store.uri_of(self.directory)} is already held by this object")
        deadline = time.monotonic() + self.wait
        rounds = 0
        while True:
            now = time.time()
            token = uuid.uuid4().hex
            claim = f"{self.directory}/{time.time_ns():020d}-{token}.json"
            self._claim = claim
            mine = LockOwner(self.host, os.getpid(), token, now, now, False, self.purpose)
            try:
                self._write_claim(claim, mine)
                live = self._live_claims_of_others()
                if not live:
                    self._owner = _as_held(mine)
                    self._write_claim(claim, self._owner)
                    self._start_heartbeat()
                    return self._owner
            except BaseException:
                # A claim left behind by a live process would block everyone else until it dies.
                self._owner = None
                self._delete_quietly(claim)
                self._claim = None
                raise
            self._delete_quietly(claim)
            self._claim = None
            holders = [(p, o) for p, o in live.items() if o is None or o.held]
            rounds += 1
            if time.monotonic() >= deadline and (holders or rounds >= _CONTENTION_ROUNDS):
                raise LockBusy(self._busy_message(holders or list(live.items())),
                               next((o for _, o in holders or live.items() if o is not None), None))
            # Contention without a holder: retry soon, at a random moment so that two
            # contenders stop meeting. A real holder: poll at the configured pace.
            pause = min(self.poll, max(deadline - time.monotonic(), 0.01)) if holders else 0.05
            time.sleep(pause * random.uniform(0.5, 1.5))

    def _busy_message(self, holders: list[tuple[str, LockOwner | None]]) -> str:
        path, owner = holders[0]
        who = owner.describe() if owner is not None else "an owner whose claim file cannot be read"
        age = f", last refresh {time.time() - owner.heartbeat_at:.0f} s ago" if owner is not None else ""
        return (f"the {self.name} lock at {self.store.uri_of(self.directory)} is held by {who}{age}; waited "
                f"{self.wait:.0f} s. Wait for that run to finish (or raise the wait); if its owner is dead, the "
                f"lock is broken automatically {self.stale_after:.0f} s after its last refresh, or remove "
                f"{self.store.uri_of(path)} by hand")

    def _delete_quietly(self, path: str) -> None:
        try:
            self.store.delete(path)
        except FileNotFoundError:
            pass

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._refresh_loop, name=f"lock-{self.name}", daemon=True)
        self._heartbeat.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.stale_after / 4):
            with self._guard:
                claim = self._claim
                if self._stop.is_set() or self._owner is None or claim is None:
                    return
                if not self.store.exists(claim):
                    logger.error("lock claim %s disappeared while held (broken as stale by another "
                                 "process?): this run no longer holds the %s lock",
                                 self.store.uri_of(claim), self.name)
                    return
                self._owner = LockOwner(**{**asdict(self._owner), "heartbeat_at": time.time()})
                self._write_claim(claim, self._owner)

    def release(self) -> None:
        if self._owner is None:
            return
        self._stop.set()
        with self._guard:  # a refresh in progress finishes before the claim goes
            if self._claim is not None:
                self._delete_quietly(self._claim)
            self._owner = None
            self._claim = None
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
            self._heartbeat = None

    @property
    def owner(self) -> LockOwner | None:
        return self._owner

    def __enter__(self) -> "StorageLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _as_held(owner: LockOwner) -> LockOwner:
    return LockOwner(**{**asdict(owner), "held": True, "heartbeat_at": time.time()})


def retrain_lock(store: Store, *, stale_after: float = 3600.0, wait: float = 0.0,
                 purpose: str = "retrain") -> StorageLock:
    """The one lock retrain, promote and rollback share (they all move the live pointer)."""
    return StorageLock(store, "retrain", stale_after=stale_after, wait=wait, purpose=purpose)
