"""`ray job submit` against a real Ray head on 127.0.0.1 with token authentication on.

The head is started with `ray start --head` (its own ports and temp dir), a small pipeline
is submitted with the token, the test waits for SUCCEEDED, checks the outputs and the
MLflow runs, and stops that head (only its processes, found by its temp dir).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_head(temp_dir: str) -> None:
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in process.info["cmdline"] or []):
                process.send_signal(signal.SIGTERM)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def test_pipeline_runs_through_ray_job_submit(tmp_path):
    import ray

    ray.shutdown()  # the suite's in-process session must not share ports with this head
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")   # short: Ray's socket paths have a length limit
    token = secrets.token_hex(16)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "RAY_TMPDIR": temp_dir, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_USAGE_STATS_ENABLED": "0",
           # The project's environment active, as for users: the job's `python` is the venv's.
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    dashboard = free_port()
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps({
        "data": "synthetic_tiny", "storage": {"root": str(tmp_path / "store")}, "shard": {"samples_per_shard": 100},
        "model": {"embedding_dim": 32}, "loss": "proxy_anchor",
        "train": {"epochs": 1, "batches_per_epoch": 2, "classes_per_batch": 8, "images_per_class": 4,
                  "threads_per_worker": 1},
        "evaluate": {"taps": ["embedding"]}, "tracking": {"experiment": "job-test"},
    }))
    started = subprocess.run(
        [RAY, "start", "--head", "--port", str(free_port()), "--dashboard-port", str(dashboard),
         "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", "--num-cpus", "4", "--disable-usage-stats",
         # Every port of this head its own, so it cannot collide with any other Ray on the machine.
         "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
         "--dashboard-agent-grpc-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
         "--metrics-export-port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        address = f"http://127.0.0.1:{dashboard}"
        runtime_env = {"excludes": [".venv/", ".git/", "chipmatch-data/", "mlruns/", "mlartifacts/", "*.db", "__pycache__/"]}
        job_id = f"chipmatch-test-{secrets.token_hex(4)}"
        command = [RAY, "job", "submit", "--address", address, "--submission-id", job_id, "--working-dir", str(REPO),
                   "--runtime-env-json", json.dumps(runtime_env), "--",
                   "python", "-m", "pipelines.cli", "run", "--config", str(config), "--json"]
        for _ in range(30):  # the head's job agent registers a few seconds after `ray start` returns
            submitted = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            if "No available agent" not in submitted.stderr + submitted.stdout:
                break
            time.sleep(3)
        status = _wait_for(address, job_id, env)
        if status != "SUCCEEDED":
            logs = subprocess.run([RAY, "job", "logs", "--address", address, job_id], env=env, capture_output=True, text=True)
            pytest.fail(f"job {job_id} ended {status}:\n{logs.stdout[-6000:]}")
        report = json.loads([line for line in submitted.stdout.splitlines() if line.startswith('{"')][-1])
        assert Path(report["manifest"]).is_file()
        assert report["stages"]["evaluate"]["runs"][0]["metrics"]["mAP"] > 0
        client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'store'}/mlflow.db")
        experiment = client.get_experiment_by_name("job-test")
        runs = client.search_runs([experiment.experiment_id], filter_string="tags.stage = 'train'")
        assert [r.data.tags["loss"] for r in runs] == ["proxy_anchor"]
        assert "mAP" in runs[0].data.metrics
        baselines = client.search_runs([experiment.experiment_id], filter_string="tags.stage = 'baseline'")
        assert [r.info.run_name for r in baselines] == ["raw_pixels"] and "mAP" in baselines[0].data.metrics
        # Without the token, the cluster refuses the client.
        refused = subprocess.run([RAY, "job", "list", "--address", address], capture_output=True, text=True, timeout=60,
                                 env={k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN",)}
                                 | {"RAY_AUTH_MODE": "token", "HOME": str(tmp_path)})
        assert refused.returncode != 0
    finally:
        stop_head(temp_dir)   # not `ray stop`: that would stop every Ray cluster on the machine


def _wait_for(address: str, job_id: str, env: dict, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    status = ""
    while time.time() < deadline:
        result = subprocess.run([RAY, "job", "status", "--address", address, job_id], env=env,
                                capture_output=True, text=True, timeout=60)
        for state in ("SUCCEEDED", "FAILED", "STOPPED"):
            if state.lower() in result.stdout.lower():
                return state
        status = result.stdout
        time.sleep(2)
    return f"timeout: {status}"
