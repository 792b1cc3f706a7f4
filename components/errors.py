"""The errors chipmatch raises on purpose, so the CLI can tell a user's mistake from a bug.

`ConfigError`, `DataError` and `ResourceError` mean "change this and run again" and carry a
message that names the key, file or resource and the fix; the CLI prints the message and
exits with its code (2, 3, 4). Anything else is a bug and shows its traceback.

Each subclass also derives from the built-in exception that code and tests already expect
(`ValueError`, `FileNotFoundError`), so `except ValueError` and `pytest.raises(ValueError)`
keep working.

A plain `FileNotFoundError` from a component is treated like a `ConfigError` by the CLI: the
paths chipmatch opens are the ones a config or a command-line flag names.
"""

from __future__ import annotations


class ChipmatchError(Exception):
    """Base class: an error whose message tells the user what to change."""

    exit_code = 1


class ConfigError(ChipmatchError, ValueError):
    """A config key or value that cannot be used (unknown key, bad value, inconsistent sections)."""

    exit_code = 2


class DataError(ChipmatchError, ValueError):
    """Inputs that do not fit: a missing dataset version or run, a source with no usable images."""

    exit_code = 3


class MissingDataError(DataError, FileNotFoundError):
    """Something a stage reads is not there yet (run the earlier stage first)."""


class ResourceError(ChipmatchError, ValueError):
    """The cluster or the storage cannot provide what the config asks for (CPUs, GPUs, a writable root)."""

    exit_code = 4
