"""The serving package's import rule (components/serving/__init__.py), read from its source."""

from __future__ import annotations

import ast
import pathlib

ALLOWED = ("components.serving", "components.index", "components.inference", "components.release",
           "components.storage", "components.errors", "components.constants", "components.lazy",
           "components.data.decode", "components.data.records")   # a query image decoded like ingest


def test_serving_imports_only_what_its_docstring_allows():
    root = pathlib.Path(__file__).resolve().parents[2] / "components" / "serving"
    files = sorted(root.glob("*.py"))
    assert {path.name for path in files} >= {"__init__.py", "app.py", "auth.py", "live.py", "query.py"}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [f"{node.module}.{alias.name}" for alias in node.names] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith("pipelines"), f"{path.name} imports {name}"
                if name.startswith("components"):
                    assert name.startswith(ALLOWED), f"{path.name} imports {name}"
