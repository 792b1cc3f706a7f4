"""The `chipmatch` command as scripts use it: --json last line, exit codes, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.data.images import write_folder_dataset


def chipmatch(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_ingest_json_is_the_last_line(tmp_path):
    write_folder_dataset(tmp_path / "chips", {f"c{i}": 6 for i in range(5)})
    result = chipmatch("ingest", "data.source=folder", f"data.root={tmp_path / 'chips'}",
                       f"storage.root={tmp_path / 'store'}", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["stage"] == "ingest" and report["created"] is True
    assert os.path.isfile(report["manifest"])
    assert sum(report["counts"][s] for s in ("train", "val", "unseen")) == 30
    assert "rejected" in result.stderr and "shards" in result.stderr      # the summary table


def test_config_errors_exit_2_naming_the_key(tmp_path):
    result = chipmatch("ingest", "shard.samples_per_shrd=5", "--json")
    assert result.returncode == 2
    assert "shard.samples_per_shrd" in result.stderr and "samples_per_shard" in result.stderr
    assert "error" in json.loads(result.stdout.strip().splitlines()[-1])
    missing = chipmatch("ingest", "data.source=folder", f"data.root={tmp_path / 'nowhere'}")
    assert missing.returncode == 2 and "nowhere" in missing.stderr


def test_unwritable_storage_fails_fast_naming_it():
    result = chipmatch("ingest", "storage.root=/proc/chipmatch-cannot-write-here")
    assert result.returncode == 2
    assert "storage.root" in result.stderr and "/proc/chipmatch-cannot-write-here" in result.stderr


def test_compare_takes_repeatable_plot_flags():
    import pytest

    from pipelines.cli import build_parser

    args = build_parser().parse_args(["compare", "--experiment", "x", "--plot", "convergence", "--plot", "pr"])
    assert args.plot == ["convergence", "pr"] and build_parser().parse_args(["compare"]).plot is None
    with pytest.raises(SystemExit):   # argparse names the valid choices
        build_parser().parse_args(["compare", "--plot", "loss"])


def test_serve_refuses_to_listen_beyond_loopback_without_a_token(tmp_path):
    env_token = os.environ.pop("CHIPMATCH_SERVE_TOKEN", None)
    try:
        result = chipmatch("serve", "--insecure", "--host", "0.0.0.0", f"storage.root={tmp_path}", "--json")
    finally:
        if env_token is not None:
            os.environ["CHIPMATCH_SERVE_TOKEN"] = env_token
    assert result.returncode == 2, result.stderr[-2000:]
    assert "CHIPMATCH_SERVE_TOKEN" in result.stderr and "loopback" in result.stderr
    assert "Traceback" not in result.stderr

