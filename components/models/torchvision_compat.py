"""Import torchvision on machines where its compiled extension cannot load.

The torchvision wheel on PyPI is a CUDA build. Next to the CPU-only torch used on the
development machines its ``_C`` extension fails to load, so the ``torchvision::nms`` operator
is never registered and ``import torchvision`` dies in ``_meta_registrations.py`` with
``RuntimeError: operator torchvision::nms does not exist``. Everything this project needs
(``models.resnet*``, ``transforms.v2``, ``tv_tensors``) is pure Python, so declaring the two
missing operator *schemas* (no kernels) is enough for the import to succeed. ``ops.nms`` still
cannot run afterwards; nothing here uses it.

On GPU machines torchvision imports natively and :func:`import_torchvision` is a plain import.
Always import torchvision through this function, never with a bare ``import torchvision``.
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType

import torch

# Schemas of the operators that torchvision's meta registrations look up at import time.
_MISSING_OPERATOR_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_MISSING_OPERATOR_ERROR = "operator torchvision::nms does not exist"

# The Library object owns the registrations: if it were garbage-collected the schemas would be
# removed again. It is created lazily inside `import_torchvision` (no side effects at import).
_schema_library: torch.library.Library | None = None
# Re-entrant so a caller holding it (e.g. a test) can call import_torchvision again.
_import_lock = threading.RLock()


def import_torchvision() -> ModuleType:
    """Return the ``torchvision`` module, applying the CPU-torch workaround when needed.

    Idempotent and safe to call from several threads: the first failing import declares the
    missing operator schemas once, later calls return the cached module.
    """
    cached = sys.modules.get("torchvision")
    # Python marks a module whose import is still running with __spec__._initializing; such a
    # module is incomplete, so only a finished one takes the fast path (no lock needed).
    if cached is not None and not getattr(getattr(cached, "__spec__", None), "_initializing", False):
        return cached
    with _import_lock:
        try:
            return importlib.import_module("torchvision")
        except RuntimeError as error:
            if _MISSING_OPERATOR_ERROR not in str(error):
                raise  # a different problem: do not mask it
        # The failed import left half-initialised torchvision submodules behind; a second import
        # would reuse them and fail again, so drop them all first.
        _forget_torchvision_modules()
        _declare_missing_operator_schemas()
        return importlib.import_module("torchvision")


def _forget_torchvision_modules() -> None:
    for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
        del sys.modules[name]


def _operator_exists(name: str) -> bool:
    # `torch.ops.torchvision.<name>` raises AttributeError for an undeclared operator.
    return hasattr(torch.ops.torchvision, name)


def _declare_missing_operator_schemas() -> None:
    global _schema_library
    missing = {name: schema for name, schema in _MISSING_OPERATOR_SCHEMAS.items() if not _operator_exists(name)}
    if not missing:
        return
    if _schema_library is None:
        try:
            _schema_library = torch.library.Library("torchvision", "DEF")
        except RuntimeError:
            # Someone else already opened the namespace with DEF (only one is allowed per
            # namespace); a FRAGMENT can still add the operators that are missing.
            _schema_library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in missing.values():
        _schema_library.define(schema)


def import_torchvision_submodule(name: str) -> ModuleType:
    """Return ``torchvision.<name>`` (e.g. ``"transforms.v2"``), which ``import torchvision`` may not load."""
    import_torchvision()
    return importlib.import_module(f"torchvision.{name}")
