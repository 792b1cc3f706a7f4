"""The torchvision import workaround: works, is idempotent and thread-safe, hides no other error."""

import subprocess
import sys
import textwrap

import pytest
import torch

from components.models import torchvision_compat
from components.models.torchvision_compat import import_torchvision, import_torchvision_submodule


def test_import_returns_the_same_module_every_time():
    first = import_torchvision()
    assert first is import_torchvision()
    assert first is sys.modules["torchvision"]
    assert hasattr(first.models, "resnet18")
    assert hasattr(torch.ops.torchvision, "nms")


def test_submodule_import():
    v2 = import_torchvision_submodule("transforms.v2")
    assert v2 is sys.modules["torchvision.transforms.v2"]
    assert hasattr(v2, "functional")


def test_fresh_interpreter_many_threads_then_again():
    # A fresh process is the only place where torchvision is certainly not imported yet.
    script = textwrap.dedent(
        """
        import sys, threading
        assert "torchvision" not in sys.modules
        import components.models  # importing the package must not import torchvision
        assert not any(name.startswith("torchvision") for name in sys.modules), "side effect at import"
        from components.models.torchvision_compat import import_torchvision
        results, errors = [], []
        def worker():
            try:
                results.append(import_torchvision())
            except Exception as error:
                errors.append(repr(error))
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads: thread.start()
        for thread in threads: thread.join()
        assert not errors, errors
        assert len({id(module) for module in results}) == 1
        assert import_torchvision() is results[0]
        import torchvision  # a plain import afterwards reuses the module
        assert torchvision is results[0]
        print("ok", torchvision.__version__)
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("ok")


def test_other_runtime_errors_are_not_masked(monkeypatch):
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)

    def failing_import(name):
        raise RuntimeError("some unrelated failure")

    monkeypatch.setattr(torchvision_compat.importlib, "import_module", failing_import)
    with pytest.raises(RuntimeError, match="some unrelated failure"):
        import_torchvision()
