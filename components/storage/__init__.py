"""Every output of chipmatch goes through here: one root URI, local or remote.

`pyarrow.fs` gives one API over local disks, S3, GCS and HDFS, so every node of a cluster can
read and write the same store by URI (``/data/chipmatch``, ``s3://bucket/chipmatch``).
On top of it this module adds what the pipeline relies on:

- atomic writes: bytes go to a temporary name next to the target and are then moved into
  place, so a reader never sees half a file and a crash leaves only ``*.tmp-*`` debris that
  `remove_temporaries` clears;
- content addressing helpers (sha256 of bytes and of canonical JSON).
"""

from components.storage.store import Store, canonical_json, sha256_bytes, sha256_json

__all__ = ["Store", "canonical_json", "sha256_bytes", "sha256_json"]
