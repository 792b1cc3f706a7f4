"""Lazy package exports (PEP 562): a package's public names, imported on first use.

`components.index` and `components.serving` list their public API in a table name → module
and resolve it here, so importing the package does not load faiss or Ray Serve until a name
that needs them is used. Each package keeps a two-line module ``__getattr__`` that calls
`lazy_attribute` (type checkers read a module's ``__getattr__`` only from a ``def``).
"""

from __future__ import annotations

import importlib
from typing import Any


def lazy_attribute(package: str, exports: dict[str, str], name: str) -> Any:
    """`name` from the module `exports` maps it to; AttributeError for any other name."""
    if name in exports:
        return getattr(importlib.import_module(exports[name]), name)
    raise AttributeError(f"module {package!r} has no attribute {name!r}")
