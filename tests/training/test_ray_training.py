"""Ray Train end to end: a killed worker resumes from its checkpoint; a 2-node cluster trains."""

from __future__ import annotations

import mlflow
import pytest

from components.training.checkpoint import load_bundle
from pipelines.config import load_config
from pipelines.context import tracking_uri
from pipelines.train import run_train

pytestmark = pytest.mark.slow


def tiny_train_config(root: str, manifest: str, *overrides: str):
    return load_config(None, [
        "data=synthetic_tiny", f"storage.root={root}", f"train.dataset={manifest}", "runs=[]",
        "model.embedding_dim=32", "loss=triplet", "train.classes_per_batch=8", "train.images_per_class=4",
        "train.batches_per_epoch=3", "train.threads_per_worker=1", "train.cpus_per_worker=1",
        "tracking.experiment=tests", *overrides,
    ])


def test_killed_worker_resumes_from_the_last_checkpoint(tiny_dataset, ray_session, capsys):
    root, manifest = tiny_dataset
    config = tiny_train_config(root, manifest, "train.epochs=3", "train.num_workers=2",
                               "train.fail_at_epoch=2", "train.max_failures=1")
    [run] = run_train(config, _console())
    assert run.metrics["epoch"] == 3
    # The worker died during the third epoch: the group restarted from a checkpoint (epoch 2,
    # or epoch 1 if the controller had not registered the newest one yet), not from scratch.
    assert run.metrics["resumed_from_epoch"] in (1, 2)
    bundle = load_bundle(run.model_uri)
    assert bundle["loss_name"] == "triplet" and bundle["epoch"] >= 1
    client = mlflow.tracking.MlflowClient(tracking_uri(config))
    history = client.get_metric_history(run.run_id, "train_loss")
    assert sorted({m.step for m in history}) == [1, 2, 3]
    recorded = client.get_run(run.run_id)
    assert recorded.data.tags["loss"] == "triplet" and recorded.data.tags["dataset_version"]
    assert recorded.data.metrics["epochs"] == 3 and recorded.data.metrics["train_seconds"] > 0
    assert recorded.data.params["model.embedding_dim"] == "32"
    # The same config again does no work.
    [again] = run_train(config, _console())
    assert again.skipped and again.model_uri == run.model_uri


def test_pipeline_on_a_two_node_cluster_with_one_worker_per_node(tmp_path):
    """ingest → train (2 workers, one per node) → evaluate → index → compare on a simulated
    2-node cluster (ray.cluster_utils.Cluster: two raylets on this machine)."""
    import ray
    from ray.cluster_utils import Cluster

    from pipelines.run import run_pipeline

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    try:
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        # 2 CPUs per worker on 2-CPU nodes: the only placement is one worker on each node.
        config = load_config(None, [
            "data=synthetic_tiny", f"storage.root={tmp_path}", "shard.samples_per_shard=100", "model.embedding_dim=32",
            "loss=triplet", "runs=[]", "train.epochs=1", "train.batches_per_epoch=2", "train.classes_per_batch=8",
            "train.images_per_class=4", "train.threads_per_worker=1", "train.num_workers=2", "train.cpus_per_worker=2",
            "evaluate.taps=[embedding]", "tracking.experiment=two-nodes",
        ])
        report = run_pipeline(config, _console())
        [trained] = report["stages"]["train"]["runs"]
        assert trained["metrics"]["epoch"] == 1 and not trained["skipped"]
        assert report["stages"]["evaluate"]["runs"][0]["metrics"]["mAP"] > 0
        assert report["stages"]["index"]["counts"]["vectors"] == 360
        # One trained row, beside the raw-pixel baseline row (loss "-") compare adds per version.
        assert sorted(row["loss"] for row in report["stages"]["compare"]["rows"]) == ["-", "triplet"]
    finally:
        ray.shutdown()
        cluster.shutdown()


def _console():
    from rich.console import Console

    return Console(stderr=True, quiet=True)


def test_too_few_resources_fail_fast_saying_what_to_change(tiny_dataset, ray_session):
    root, manifest = tiny_dataset
    config = tiny_train_config(root, manifest, "train.num_workers=16")
    with pytest.raises(ValueError, match=r"train.num_workers=16.*CPUs"):
        run_train(config, _console())
