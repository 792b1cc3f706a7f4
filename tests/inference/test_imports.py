"""Package boundaries: inference and evaluation import neither training nor index (no circle)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PACKAGES = ("components.training", "components.evaluation", "components.index", "components.inference",
            "components.tracking", "pipelines")


@pytest.mark.parametrize("module, forbidden", [
    ("components.inference", {"components.training", "components.evaluation", "components.index",
                              "components.tracking", "pipelines"}),
    ("components.evaluation.model_eval", {"components.training", "components.index", "pipelines"}),
    ("components.index.embedding", {"components.training", "components.evaluation", "pipelines"}),
    ("components.training.loop", {"components.index", "pipelines"}),
])
def test_a_package_does_not_pull_in_the_packages_above_it(module, forbidden):
    code = (f"import json, sys; import {module}; "
            f"print(json.dumps(sorted({{m.rsplit('.', 1)[0] if m.count('.') > 1 else m for m in sys.modules}})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = {name for name in json.loads(done.stdout) if name.startswith(PACKAGES)}
    loaded |= {".".join(name.split(".")[:2]) for name in loaded}
    assert not (loaded & forbidden), sorted(loaded & forbidden)
