"""The pipeline on object storage: ingest → train → evaluate → index → search with
`storage.root=s3://bucket/chipmatch` against a real S3 endpoint on 127.0.0.1.

The endpoint is moto's server (its own WSGI app behind werkzeug, as `moto_server` runs it),
with IAM authentication switched on after set-up, so a wrong secret is refused as AWS would
refuse it. Every stage runs as the `chipmatch` command in a subprocess, with the endpoint and
credentials only in the environment a user would set (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION): the embedded Ray, its Train workers (checkpoints, the
streamed training input) and MLflow's artifact client must all find them there.

The server records every request (method, path, Range header), so the test checks what the
stages actually did on the wire: training read the sample index and fetched the chips of its
batches, one ranged GET each (located independently, with tarfile), fewer than the split holds.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHIPMATCH = str(Path(sys.executable).parent / "chipmatch")
BUCKET, PREFIX = "bucket", "chipmatch"
ROOT = f"s3://{BUCKET}/{PREFIX}"
REGION = "us-east-1"


class S3Endpoint:
    """moto's S3 (and IAM) on 127.0.0.1, recording every request it answers."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import MotoRequestHandler
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        self.requests: list[tuple[str, str, str | None]] = []   # (method, path, Range header)
        requests = self.requests

        class RecordingHandler(MotoRequestHandler):
            def log_request(self, code="-", size="-"):   # instead of a line on stderr per request
                requests.append((self.command, self.path, self.headers.get("Range")))

        self.server = make_server("127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded=True,
                                  request_handler=RecordingHandler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def client(self, service: str, key_id: str = "setup", secret: str = "setup"):
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name=REGION, aws_access_key_id=key_id,
                            aws_secret_access_key=secret)

    def require_authentication(self) -> None:
        """From now on only signed requests of known IAM access keys are answered (moto's auth switch)."""
        import requests

        requests.post(f"{self.url}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The endpoint, a bucket, and one IAM user's access key allowed everything: (endpoint, key id, secret)."""
    endpoint = S3Endpoint()
    iam = endpoint.client("iam")
    iam.create_user(UserName="chipmatch")
    iam.put_user_policy(UserName="chipmatch", PolicyName="everything", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="chipmatch")["AccessKey"]
    endpoint.client("s3", key["AccessKeyId"], key["SecretAccessKey"]).create_bucket(Bucket=BUCKET)
    endpoint.require_authentication()
    yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    endpoint.stop()


def user_environment(endpoint_url: str, key_id: str, secret: str, home: Path) -> dict[str, str]:
    """What a user exports for an S3-compatible store, and nothing else that could point elsewhere."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "MLFLOW_")) and k not in ("RAY_ADDRESS", "HOME")}
    env.update({
        "AWS_ENDPOINT_URL": endpoint_url, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_REGION": REGION,
        # No ~/.aws files and no EC2 metadata lookups: the environment is the only source.
        "HOME": str(home), "AWS_EC2_METADATA_DISABLED": "true",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    })
    return env


def chipmatch(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([CHIPMATCH, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def last_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def bucket_objects(client) -> dict[str, int]:
    """Every object under the prefix: key (relative to the prefix) → size."""
    objects: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/"):
        objects.update({o["Key"][len(PREFIX) + 1:]: o["Size"] for o in page.get("Contents", [])})
    return objects


def test_store_streams_and_ranged_reads_cost_few_requests(s3, monkeypatch):
    """On S3 a request is the unit of cost: a sequential tar pass over a shard is one GET per
    read-ahead buffer (not one per 10 KiB tar record), and a chip is one GET of its own bytes."""
    from components.storage import Store
    from components.storage.store import STREAM_BUFFER_BYTES

    endpoint, key_id, secret = s3
    for name, value in user_environment(endpoint.url, key_id, secret, Path("/nonexistent")).items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    store = Store(f"{ROOT}/store-test")
    payload, members = io.BytesIO(), {}
    with tarfile.open(fileobj=payload, mode="w") as tar:
        for i in range(400):
            data = bytes([i % 251]) * (2000 + i)
            info = tarfile.TarInfo(f"k{i:04d}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            members[info.name] = data
    store.write_bytes("shard.tar", payload.getvalue())
    size = len(payload.getvalue())
    assert size > STREAM_BUFFER_BYTES // 8    # many tar records per buffer

    start = len(endpoint.requests)
    with store.open_input("shard.tar") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        seen = {m.name: tar.extractfile(m).read() for m in tar}
    assert seen == members
    gets = [r for r in endpoint.requests[start:] if r[0] == "GET"]
    assert len(gets) <= -(-size // STREAM_BUFFER_BYTES) + 1, gets

    member = tarfile.open(fileobj=io.BytesIO(payload.getvalue())).getmember("k0123.png")
    start = len(endpoint.requests)
    with store.fs.open_input_file(store.path("shard.tar")) as handle:   # what ChipReader does
        assert handle.read_at(member.size, member.offset_data) == members["k0123.png"]
    gets = [r for r in endpoint.requests[start:] if r[0] == "GET"]
    assert gets == [("GET", f"/{BUCKET}/{PREFIX}/store-test/shard.tar",
                     f"bytes={member.offset_data}-{member.offset_data + member.size - 1}")]


BATCHES, P, K = 3, 8, 4     # the training run's epoch: 3 batches of P classes × K images


def write_config(path: Path, tracking_db: Path) -> Path:
    path.write_text(json.dumps({   # JSON is YAML
        "data": "synthetic_tiny", "storage": {"root": ROOT}, "shard": {"samples_per_shard": 100},
        "model": {"backbone": "small_cnn", "embedding_dim": 16},
        "train": {"epochs": 1, "batches_per_epoch": BATCHES, "classes_per_batch": P, "images_per_class": K,
                  "num_workers": 1, "cpus_per_worker": 1, "loader_workers": 1},
        "runs": [{"name": "triplet", "loss": "triplet"}],
        "evaluate": {"taps": ["embedding"]},
        "index": {"splits": ["unseen"]},
        # The MLflow store stays a local sqlite file (an sqlite store cannot live on S3); its
        # artifacts go under the storage root (the experiment's artifact location).
        "tracking": {"uri": f"sqlite:///{tracking_db}", "experiment": "s3-end-to-end"},
        "ray": {"num_cpus": 4},
    }))
    return path


def chip_ranges(bucket, objects: dict[str, int], split: str) -> dict[tuple[str, str], str]:
    """(request path, Range header) of a one-chip read → sample key, for every chip of `split`'s
    shards, located with Python's tarfile (independent of chipmatch's sample index)."""
    ranges = {}
    for name in sorted(objects):
        if not re.fullmatch(rf"shards/{split}-[0-9a-f]+\.tar", name):
            continue
        data = bucket.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{name}")["Body"].read()
        for member in tarfile.open(fileobj=io.BytesIO(data)):
            if member.name.endswith(".png"):
                byte_range = f"bytes={member.offset_data}-{member.offset_data + member.size - 1}"
                ranges[(f"/{BUCKET}/{PREFIX}/{name}", byte_range)] = member.name.removesuffix(".png")
    return ranges


def test_every_stage_runs_on_an_s3_root(s3, tmp_path):
    endpoint, key_id, secret = s3
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = user_environment(endpoint.url, key_id, secret, tmp_path / "home")
    config = write_config(tmp_path / "s3.yaml", tmp_path / "mlflow.db")
    bucket = endpoint.client("s3", key_id, secret)

    ingested = last_json(chipmatch(["ingest", "--config", str(config), "--json"], env, workdir))
    assert ingested["manifest"].startswith(f"{ROOT}/datasets/synthetic_tiny/")
    version = ingested["version"]

    before_train = len(endpoint.requests)
    [trained] = last_json(chipmatch(["train", "--config", str(config), "--json"], env, workdir, timeout=600))["runs"]
    during_train = endpoint.requests[before_train:]
    assert trained["model"].startswith(f"{ROOT}/runs/") and trained["skipped"] is False

    # evaluate, index and compare; ingest and train are found complete on S3 and reused.
    stages = last_json(chipmatch(["run", "--config", str(config), "--json"], env, workdir, timeout=600))["stages"]
    assert stages["ingest"]["created"] is False
    assert [(r["name"], r["skipped"]) for r in stages["train"]["runs"]] == [("triplet", True)]
    index_uri = stages["index"]["index"]
    assert index_uri.startswith(f"{ROOT}/indexes/") and stages["index"]["counts"]["vectors"] == ingested["counts"]["unseen"]

    objects = bucket_objects(bucket)
    run_folder = trained["model"][len(ROOT) + 1:].removesuffix("/model")
    run_key = run_folder.rsplit("/", 1)[1]
    expected = [
        r"shards/train-[0-9a-f]+\.tar", r"shards/val-[0-9a-f]+\.tar", r"shards/unseen-[0-9a-f]+\.tar",
        rf"datasets/synthetic_tiny/{version}/manifest\.json", rf"datasets/synthetic_tiny/{version}/samples\.parquet",
        rf"ray_results/{re.escape(run_key)}/checkpoint_[^/]+/checkpoint\.pt",           # Ray Train's checkpoints
        rf"{re.escape(run_folder)}/model/model\.pt", rf"{re.escape(run_folder)}/result\.json",
        rf"{re.escape(run_folder)}/evaluation-[0-9a-f]+\.json",
        rf"{re.escape(index_uri[len(ROOT) + 1:])}/(index\.json|source\.json|.+\.faiss|.+\.parquet)",
        r"mlartifacts/.+/MLmodel",                                                       # MLflow's logged model
        r"compare/s3-end-to-end\.(md|csv)",
    ]
    for pattern in expected:
        assert any(re.fullmatch(pattern, name) for name in objects), f"no object matches {pattern}: {sorted(objects)}"
    assert not [name for name in objects if ".tmp-" in name], "debris of atomic writes left in the bucket"

    # MLflow: runs in the local sqlite store, artifacts under the storage root on S3.
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("s3-end-to-end")
    assert experiment.artifact_location == f"{ROOT}/mlartifacts"
    assert client.get_run(trained["mlflow_run_id"]).info.status == "FINISHED"

    # Training streamed its input from S3: the sample index, then one ranged GET per chip of
    # its batches (at most P×K per batch: a chip drawn twice may come from the loader's
    # cache), so fewer chips than the split holds; Ray Train wrote its checkpoint there too.
    assert any(m == "GET" and path.endswith(f"/{version}/samples.parquet") for m, path, _ in during_train)
    assert any(m in ("PUT", "POST") and f"/ray_results/{run_key}/checkpoint_" in path for m, path, _ in during_train)
    train_chips = chip_ranges(bucket, objects, "train")
    read = {train_chips[(path, byte_range)] for m, path, byte_range in during_train
            if m == "GET" and (path, byte_range) in train_chips}
    assert 0 < len(read) <= BATCHES * P * K < len(train_chips), (len(read), len(train_chips))
    print(f"training: {len(read)} of the {len(train_chips)} training chips read, one ranged GET each")

    # search: a chip of the index, by its own bytes, finds itself first.
    unseen_shard = next(name for name in sorted(objects) if name.startswith("shards/unseen-"))
    tar = tarfile.open(fileobj=io.BytesIO(bucket.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{unseen_shard}")["Body"].read()))
    member = next(m for m in tar.getmembers() if m.name.endswith(".png"))
    query = tmp_path / "query.png"
    query.write_bytes(tar.extractfile(member).read())
    found = last_json(chipmatch(["search", "--index", index_uri, "--image", str(query), "-k", "5", "--json"], env, workdir))
    assert len(found["results"]) == 5
    assert found["results"][0]["key"] == member.name.removesuffix(".png")

    # Nothing local but the sqlite store the config named (no ./chipmatch-data, no stray files).
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize("case", ["closed_port", "wrong_secret", "missing_bucket"])
def test_an_unreachable_store_is_a_config_error_naming_storage_root(s3, tmp_path, case):
    endpoint, key_id, secret = s3
    url, root = endpoint.url, ROOT
    if case == "closed_port":
        import socket

        with socket.socket() as sock:   # a port nothing listens on once the socket is closed
            sock.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    elif case == "wrong_secret":
        secret = "not-the-secret"
    else:
        root = "s3://no-such-bucket/chipmatch"
    env = user_environment(url, key_id, secret, tmp_path / "home")
    config = write_config(tmp_path / "s3.yaml", tmp_path / "mlflow.db")
    result = chipmatch(["ingest", "--config", str(config), f"storage.root={root}", "--json"], env, tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"storage.root {root!r}" in result.stderr
    assert "AWS_ENDPOINT_URL" in result.stderr     # the hint names what to check
    assert "Traceback" not in result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["exit_code"] == 2


def test_an_s3_root_without_tracking_uri_is_a_config_error_naming_tracking_uri(s3, tmp_path):
    """No sqlite default next to a remote root: the stage says which key to set, with no traceback."""
    endpoint, key_id, secret = s3
    env = user_environment(endpoint.url, key_id, secret, tmp_path / "home")
    config = write_config(tmp_path / "s3.yaml", tmp_path / "mlflow.db")
    result = chipmatch(["compare", "--config", str(config), "tracking.uri=null"], env, tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "set tracking.uri" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_a_read_only_stage_with_wrong_credentials_names_the_uri(s3, tmp_path):
    """search writes nothing (no write check before it): its first read is refused, and that is
    reported as such, with the settings to check, not as a traceback."""
    endpoint, key_id, _ = s3
    env = user_environment(endpoint.url, key_id, "not-the-secret", tmp_path / "home")
    index = f"{ROOT}/indexes/synthetic_tiny/v/run/Flat-1"
    result = chipmatch(["search", "--index", index, "--image", str(tmp_path / "query.png")], env, tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"{index}/" in result.stderr and "cannot be read" in result.stderr and "AWS_ACCESS_KEY_ID" in result.stderr
    assert "Traceback" not in result.stderr
