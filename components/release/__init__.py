"""Putting a model and its index into service safely: the parts of `chipmatch retrain`,
`promote` and `rollback` that do not depend on the pipelines.

- `live`: the live index pointer ``indexes/<name>/LIVE.json``, switched and rolled back by
  one atomic rename, with a history of generations and pruning of the old ones;
- `lock`: a lock on the storage root so that two retrains never run at once, with a
  stale-lock timeout for owners that died;
- `gate`: the promotion decision (champion versus challenger metrics), a pure function.

What this package may import: `components.storage` (every byte goes through a `Store`, so
the same code works on a local root and on s3://), `components.tracking` (MLflow helpers),
and file-name constants of `components.index` / `components.constants`. Never `pipelines`:
the stages are built on top of this package, not the other way round.
"""

from components.release.gate import Decision, decide
from components.release.live import (
    LIVE_FILENAME,
    Generation,
    LivePointer,
    prune_generations,
    read_pointer,
    resolve_live,
    rollback,
    switch_live,
)
from components.release.lock import LockBusy, LockOwner, StorageLock, retrain_lock

__all__ = [
    "Decision",
    "Generation",
    "LIVE_FILENAME",
    "LivePointer",
    "LockBusy",
    "LockOwner",
    "StorageLock",
    "decide",
    "prune_generations",
    "read_pointer",
    "resolve_live",
    "retrain_lock",
    "rollback",
    "switch_live",
]
