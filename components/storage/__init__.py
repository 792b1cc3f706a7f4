"""Every output of chipmatch goes through here: one root URI, local or remote.

`pyarrow.fs` gives one API over local disks, S3, GCS and HDFS, so every node of a cluster can
read and write the same store by URI (``/data/chipmatch``, ``s3://bucket/chipmatch``).
On top of it this module adds what the pipeline relies on:

- atomic writes: bytes go to a temporary name next to the target and are then moved into
  place, so a reader never sees half a file and a crash leaves only ``*.tmp-*`` debris that
  `remove_temporaries` clears;
- content addressing helpers (sha256 of bytes and of canonical JSON);
- `Layout`: the relative path of every stage output, and `reuse_when_complete`, the one
  "skip when the output is complete" check (see `components.storage.layout`).

Endpoint and credentials of an object store are never in the config: `FileSystem.from_uri`
(pyarrow 25) reads them from the standard environment (AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3
for S3-compatible stores such as MinIO, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_REGION,
or ~/.aws and instance roles). Ray Train's checkpoint storage (`storage_path`, opened by the
same `from_uri`) and MLflow's artifact client (boto3) read the same variables, so one set of
exports reaches every writer. (pyarrow's `S3FileSystem()` constructor, unlike `from_uri`,
ignores AWS_ENDPOINT_URL: filesystems are only ever made from a URI here.)
"""

from components.storage.layout import Layout, RunPaths, SweepPaths, reuse_when_complete
from components.storage.store import Store, canonical_json, sha256_bytes, sha256_json

__all__ = ["Layout", "RunPaths", "Store", "SweepPaths", "canonical_json", "reuse_when_complete", "sha256_bytes",
           "sha256_json"]
