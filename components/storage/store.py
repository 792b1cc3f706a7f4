"""A thin, typed layer over a `pyarrow.fs` filesystem rooted at one URI."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow.fs as pafs

from components.errors import ConfigError

TEMP_MARKER = ".tmp-"
# Read-ahead of sequential streams. Unbuffered, pyarrow's S3 stream sends one ranged GET per
# read() call, and tarfile reads 10 KiB records: a 1 MB shard took 106 requests, 1 with this
# buffer (measured on moto's server). Random access (`ChipReader`) uses open_input_file instead.
STREAM_BUFFER_BYTES = 4 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal objects give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_json(obj: Any) -> str:
    return sha256_bytes(canonical_json(obj).encode("utf-8"))


def remote_hint(root_uri: str) -> str:
    """What to check when an object store cannot be reached: the settings it is read from."""
    if root_uri.startswith("s3://"):
        return ("; for s3:// check that the bucket exists and the environment: AWS_ENDPOINT_URL (an "
                "S3-compatible store such as MinIO), AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_REGION")
    return ""


class StoreUnreachable(ConfigError, OSError):
    """An object store refused or could not answer a read (endpoint, credentials, bucket): a
    config error for the CLI (exit 2, no traceback), still an OSError for callers that catch one."""


# What an object store says when the endpoint, the credentials or the bucket are wrong (pyarrow
# passes the AWS SDK's error names and curl's messages through). Anything else (HTTP 5xx,
# SLOW_DOWN, timeouts) is transient and keeps its own OSError.
_SETUP_ERROR_MARKERS = (
    "ACCESS_DENIED", "AccessDenied", "HTTP status 401", "HTTP status 403", "INVALID_ACCESS_KEY", "InvalidAccessKeyId",
    "SIGNATURE_DOES_NOT_MATCH", "SignatureDoesNotMatch", "NO_SUCH_BUCKET", "NoSuchBucket",
    "Could not connect", "Couldn't connect", "Failed to connect", "Connection refused", "resolve host", "resolve proxy",
)   # not NETWORK_CONNECTION alone: curl's timeouts carry it too


def _is_setup_error(exc: OSError) -> bool:
    text = str(exc)
    return any(marker.lower() in text.lower() for marker in _SETUP_ERROR_MARKERS)


class Store:
    """Files under one root URI. Paths given to methods are relative to the root, '/'-separated.

    A plain path (relative or absolute) means the local filesystem; relative paths are made
    absolute at construction so that Ray workers started elsewhere resolve them the same way.
    """

    def __init__(self, root_uri: str):
        if not root_uri:
            raise ConfigError("storage.root must be a path or URI, got an empty string")
        if "://" not in root_uri:
            root_uri = os.path.abspath(os.path.expanduser(root_uri))
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(root_uri)
        except Exception as exc:  # pyarrow raises several types for bad URIs
            raise ConfigError(
                f"storage.root {root_uri!r} cannot be opened ({exc}); use a local path or a "
                f"URI pyarrow supports (s3://bucket/prefix, gs://bucket/prefix, hdfs://...){remote_hint(root_uri)}"
            ) from exc
        self.uri = root_uri
        self.root = self.root.rstrip("/") or "/"

    # -- paths --------------------------------------------------------------------------
    def path(self, relative: str) -> str:
        return posixpath.join(self.root, relative) if relative else self.root

    def uri_of(self, relative: str) -> str:
        """The full URI of a relative path (what stages print and record)."""
        base = self.uri.rstrip("/")
        return f"{base}/{relative}" if relative else base

    def check_writable(self) -> None:
        """Fail fast, naming the root, when outputs cannot be written there."""
        probe = f".chipmatch-write-check-{uuid.uuid4().hex}"
        try:
            self.write_bytes(probe, b"ok")
            self.delete(probe)
        except Exception as exc:  # any filesystem error means the same to the user
            raise ConfigError(f"storage.root {self.uri!r} is not writable ({exc}); set storage.root to a "
                             f"writable local path or a reachable s3://, gs:// URI{remote_hint(self.uri)}") from None

    @contextmanager
    def _reaching(self, relative: str) -> Iterator[None]:
        """Name the URI and the settings to check when an object store fails a read (a missing
        file stays FileNotFoundError; local filesystem errors pass unchanged)."""
        try:
            yield
        except FileNotFoundError:
            raise
        except OSError as exc:
            if "://" not in self.uri or self.uri.startswith("file://") or isinstance(exc, StoreUnreachable):
                raise
            if not _is_setup_error(exc):   # a 5xx, a throttle, a timeout: not the user's settings
                raise
            raise StoreUnreachable(f"{self.uri_of(relative)} cannot be read ({exc}){remote_hint(self.uri)}") from None

    # -- queries ------------------------------------------------------------------------
    def exists(self, relative: str) -> bool:
        with self._reaching(relative):
            return self.fs.get_file_info(self.path(relative)).type != pafs.FileType.NotFound

    def list(self, relative: str = "", recursive: bool = False) -> list[str]:
        """Relative paths of the files (not directories) below `relative`; [] if it is absent."""
        base = self.path(relative)
        with self._reaching(relative):
            if self.fs.get_file_info(base).type == pafs.FileType.NotFound:
                return []
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=recursive))
        prefix = self.root.rstrip("/") + "/"
        return sorted(
            info.path[len(prefix):] if info.path.startswith(prefix) else info.path
            for info in infos
            if info.type == pafs.FileType.File
        )

    def list_dirs(self, relative: str = "") -> builtins.list[str]:   # `list` is the method above
        base = self.path(relative)
        with self._reaching(relative):
            if self.fs.get_file_info(base).type == pafs.FileType.NotFound:
                return []
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=False))
        return sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.Directory)

    # -- reading ------------------------------------------------------------------------
    def read_bytes(self, relative: str) -> bytes:
        try:
            with self._reaching(relative), \
                    self.fs.open_input_stream(self.path(relative), buffer_size=STREAM_BUFFER_BYTES) as stream:
                return stream.read()
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{self.uri_of(relative)} does not exist") from exc

    def read_json(self, relative: str) -> Any:
        return json.loads(self.read_bytes(relative).decode("utf-8"))

    def open_input(self, relative: str):
        """A sequential, read-ahead stream (see STREAM_BUFFER_BYTES)."""
        with self._reaching(relative):
            return self.fs.open_input_stream(self.path(relative), buffer_size=STREAM_BUFFER_BYTES)

    # -- writing ------------------------------------------------------------------------
    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write atomically: a temporary sibling, then a move into place."""
        target = self.path(relative)
        self.fs.create_dir(posixpath.dirname(target), recursive=True)
        temporary = f"{target}{TEMP_MARKER}{uuid.uuid4().hex}"
        with self.fs.open_output_stream(temporary) as stream:
            stream.write(data)
        self.fs.move(temporary, target)

    def write_json(self, relative: str, obj: Any) -> None:
        text = json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
        self.write_bytes(relative, text.encode("utf-8"))

    def delete(self, relative: str) -> None:
        self.fs.delete_file(self.path(relative))

    def remove_temporaries(self, relative: str = "") -> int:
        """Delete the debris of interrupted atomic writes below `relative`; returns the count."""
        removed = 0
        for name in self.list(relative, recursive=True):
            if TEMP_MARKER in posixpath.basename(name):
                self.delete(name)
                removed += 1
        return removed
