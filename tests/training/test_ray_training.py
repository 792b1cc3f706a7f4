"""Ray Train end to end: a killed worker resumes from its checkpoint; a 2-node cluster trains."""

from __future__ import annotations

import io
from pathlib import Path

import mlflow
import pytest
import torch

from components.storage import Layout, Store
from components.training.checkpoint import load_bundle
from components.training.loop import STEP_CHECKPOINT_FILE
from pipelines.config import load_config
from pipelines.context import tracking_uri
from pipelines.epochs import epoch_checkpoints
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
    # 3 steps per epoch; a mid-epoch checkpoint at global step 7 (epoch 2, first step), right
    # before the injected failure of a worker at that step.
    config = tiny_train_config(root, manifest, "train.epochs=3", "train.num_workers=2",
                               "train.fail_at_epoch=2", "train.max_failures=1", "train.checkpoint_every_steps=7")
    [run] = run_train(config, _console())
    assert run.metrics["epoch"] == 3
    # The worker died during the third epoch: the group restarted from a checkpoint (mid-epoch
    # 2 after its first step, the end of epoch 2, or of epoch 1 if the controller had not
    # registered the newest ones yet), not from scratch.
    assert run.metrics["resumed_from_epoch"] in (1, 2)
    assert run.metrics["resumed_from_step"] in (3, 6, 7), run.metrics
    # Ray keeps the last two registered checkpoints, the mid-epoch one of step 7 and epoch 3's
    # end, plus those the controller never registered (its health check polls every 2 s, so
    # whether the group resumed at step 7 or earlier is a race). The mid-epoch ones (state
    # epoch 2, written after epoch 2's end) never stand in for an epoch's checkpoint.
    step_files = list(Path(root, Layout.ray_results()).rglob(STEP_CHECKPOINT_FILE))
    [run_folder] = {path.parents[1] for path in step_files}
    assert all(torch.load(path, weights_only=False)["mid_epoch"] for path in step_files)
    store = Store(str(run_folder.parent))
    epochs = epoch_checkpoints(store, run_folder.name)
    assert 3 in epochs and not any(torch.load(io.BytesIO(store.read_bytes(path)), weights_only=False).get("mid_epoch")
                                   for path in epochs.values()), epochs
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
