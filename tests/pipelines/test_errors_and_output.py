"""User mistakes exit with their code and message, bugs show their traceback; a loss is never
built to read a config but is checked on the driver; output is readable in files."""

from __future__ import annotations

import functools
import io
import json
import logging

import pytest
from rich.console import Console

from components.errors import ConfigError, DataError, MissingDataError, ResourceError
from components.storage import Layout, Store
from pipelines import cli
from pipelines.config import load_config


def run_cli(monkeypatch, tmp_path, capsys, raised: BaseException | None, *flags: str) -> tuple[int, str, str]:
    def handler(config, context, args):
        if raised is not None:
            raise raised
        return {"stage": "ingest", "root": context.store.uri}

    monkeypatch.setitem(cli.STAGES, "ingest", (handler, "test stage"))
    code = cli.main(["ingest", "--json", *flags, f"storage.root={tmp_path}"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("error", "code"), [
    (ConfigError("train.lr=-1: must be > 0"), 2), (FileNotFoundError("data.root '/nowhere' is not a directory"), 2),
    (DataError("every input was rejected"), 3), (MissingDataError("run `chipmatch ingest` first"), 3),
    (ResourceError("needs 16 CPUs, the cluster has 4"), 4),
])
def test_user_errors_exit_with_their_code_and_message(monkeypatch, tmp_path, capsys, error, code):
    returned, out, err = run_cli(monkeypatch, tmp_path, capsys, error)
    assert returned == code
    assert str(error) in " ".join(err.split()) and "Traceback" not in err
    assert json.loads(out.strip().splitlines()[-1]) == {"stage": "ingest", "error": str(error), "exit_code": code}


def test_a_bug_shows_its_traceback_instead_of_a_config_error(monkeypatch, tmp_path, capsys):
    with pytest.raises(TypeError, match="unsupported operand"):
        run_cli(monkeypatch, tmp_path, capsys, TypeError("unsupported operand type(s) for +: 'int' and 'str'"))
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["exit_code"] == 1
    code, out, _ = run_cli(monkeypatch, tmp_path, capsys, None)
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["root"] == str(tmp_path)


def test_errors_stay_the_builtin_types_callers_catch():
    assert issubclass(ConfigError, ValueError) and issubclass(ResourceError, ValueError)
    assert issubclass(MissingDataError, FileNotFoundError) and issubclass(MissingDataError, DataError)


def test_reading_a_loss_config_never_builds_the_loss(monkeypatch):
    from components.losses import LOSSES

    cls = LOSSES["hierarchical_proxy"]

    @functools.wraps(cls.__init__)   # inspect.signature still sees the real parameters
    def refuse(*args, **kwargs):
        raise AssertionError("config validation built a loss")

    monkeypatch.setattr(cls, "__init__", refuse)
    config = load_config(None, ["loss=hierarchical_proxy"])
    assert config.loss.name == "hierarchical_proxy"
    with pytest.raises(ConfigError) as info:
        load_config(None, ["loss=triplet", "loss.params.margn=0.1"])
    message = str(info.value)
    assert "margn" in message and "'margin'" in message and "'soft_margin'" in message


def write_manifest(root, classes: int) -> str:
    store = Store(str(root))
    store.write_json(Layout.manifest("toy", "v1"), {"dataset": "toy", "version": "v1", "split": {"seed": 0},
                                                     "source": {"source": "folder"},
                                                     "counts": {"train": {f"c{i}": 4 for i in range(classes)}}})
    return store.uri_of(Layout.manifest("toy", "v1"))


def test_loss_values_are_checked_on_the_driver_with_the_datasets_classes(tmp_path):
    from pipelines.runs import plan_run
    from pipelines.trainer import check_loss_builds

    manifest = write_manifest(tmp_path, classes=5)
    bad = load_config(None, ["loss=triplet", "loss.params.margin=-1", f"train.dataset={manifest}"])   # names fine
    with pytest.raises(ConfigError, match=r"loss 'triplet' of run 'triplet'.*margin"):
        check_loss_builds(bad, plan_run(bad, "triplet", bad.loss, bad.train, manifest))
    good = load_config(None, ["loss=proxy_anchor", f"train.dataset={manifest}"])
    check_loss_builds(good, plan_run(good, "proxy_anchor", good.loss, good.train, manifest))


def test_missing_dataset_says_which_stage_to_run(tmp_path):
    from pipelines.context import StageContext

    context = StageContext(load_config(None, ["data=synthetic_tiny", f"storage.root={tmp_path}"]), Console(quiet=True))
    with pytest.raises(MissingDataError, match="chipmatch ingest"):
        _ = context.dataset
    assert context.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    context.dataset = write_manifest(tmp_path, 3)
    assert context.dataset.endswith("datasets/toy/v1/manifest.json")


def test_tables_keep_full_run_names_when_output_is_not_a_terminal(tmp_path):
    from components.storage import RunPaths
    from pipelines.context import FILE_WIDTH, make_console
    from pipelines.runs import TrainedRun
    from pipelines.train import summary_table

    console = make_console()          # pytest's stderr is not a terminal
    assert console.width == FILE_WIDTH
    console.file = io.StringIO()
    name = "warp_from_cross_entropy_with_a_long_name"
    run = TrainedRun(name, "warp", "m", "r", {"epoch": 3, "train_seconds": 1.5, "best_val_mAP": 0.5}, False,
                     RunPaths("toy", "v1", name))
    console.print(summary_table([run]))
    assert name in console.file.getvalue()


def test_ray_output_goes_to_the_log_file_not_the_terminal(tmp_path, capsys):
    from ray._private import worker as ray_worker

    from pipelines.ray_compat import configure_ray_data_logging, send_worker_output_to
    from pipelines.ray_session import LIBRARY_LOGGERS, send_library_logs_to

    dispatcher = ray_worker.global_worker_stdstream_dispatcher
    configure_ray_data_logging()
    loggers = [logging.getLogger(n) for n in LIBRARY_LOGGERS]
    saved = (list(dispatcher.handlers), [list(lg.handlers) for lg in loggers])
    path = tmp_path / "ray.log"
    try:
        send_library_logs_to(str(path))
        send_worker_output_to(str(path))
        dispatcher.emit({"pid": 42, "ip": "127.0.0.1", "is_err": True, "actor_name": "RayTrainWorker",
                         "lines": ["E core_worker.cc:1 PreemptionWatcher failed", "Reporting training result 1: {...}"]})
        logging.getLogger("ray.data").warning("Execution plan of Dataset: ...")
        logging.getLogger("mlflow.store.db.utils").warning("Creating initial MLflow database tables...")
    finally:
        dispatcher.handlers = saved[0]
        for lg, handlers in zip(loggers, saved[1]):
            lg.handlers = handlers
    written = path.read_text()
    assert "(RayTrainWorker pid=42, ip=127.0.0.1) E core_worker.cc:1 PreemptionWatcher failed" in written
    assert "Reporting training result 1" in written and "Execution plan of Dataset" in written
    assert "Creating initial MLflow database tables" in written
    captured = capsys.readouterr()
    assert "PreemptionWatcher" not in captured.err + captured.out and "Execution plan" not in captured.err


def test_native_stderr_goes_to_the_log_file_and_python_stderr_stays(tmp_path):
    """What C++ writes to file descriptor 2 lands in the log; the console and tracebacks do not."""
    import subprocess
    import sys

    log = tmp_path / "native.log"
    script = ("import os, sys\n"
              "from pipelines.ray_session import send_native_stderr_to\n"
              f"send_native_stderr_to({str(log)!r})\n"
              "os.write(2, b'[E core_worker.cc:2465] native warning\\n')\n"
              "print('chipmatch progress', file=sys.stderr)\n"
              "raise SystemExit('a traceback-worthy failure')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "native warning" in log.read_text() and "native warning" not in done.stderr
    assert "chipmatch progress" in done.stderr and "a traceback-worthy failure" in done.stderr
    assert "chipmatch progress" not in log.read_text()
