"""evaluate.per_epoch: every epoch's kept checkpoint measured on the unseen classes and logged
per epoch (real Ray Train, real sqlite). Reference: at the epoch training selected (the last
`is_best`), the checkpoint holds the very weights of the model bundle, so its unseen R@1 and mAP
equal what the evaluate stage measures on the bundle."""

from __future__ import annotations

import mlflow
import pytest
from rich.console import Console

from components import constants as C
from pipelines.compare import convergence_series
from pipelines.config import load_config
from pipelines.context import StageContext
from pipelines.evaluate import run_evaluate
from pipelines.train import run_train

pytestmark = pytest.mark.slow


def test_per_epoch_unseen_metrics_are_logged_and_match_the_selected_model(tiny_dataset, ray_session, tmp_path):
    root, manifest = tiny_dataset
    config = load_config(None, [
        f"storage.root={root}", f"train.dataset={manifest}", "data=synthetic_tiny", "model.embedding_dim=16",
        "train.epochs=3", "train.batches_per_epoch=2", "train.classes_per_batch=8", "train.images_per_class=4",
        "train.threads_per_worker=1", "runs=[{name: per_epoch_pa, loss: proxy_anchor}]", "evaluate.per_epoch=true",
        "evaluate.taps=[embedding]", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "tracking.experiment=per-epoch",
    ])
    context = StageContext(config, Console(quiet=True))
    runs = run_train(config, context)
    evaluated = run_evaluate(config, context, runs=runs)
    client = mlflow.tracking.MlflowClient(context.tracking_uri)
    run_id = runs[0].run_id

    def history(key):
        return {m.step: m.value for m in client.get_metric_history(run_id, key) if m.step >= 1}

    unseen = history("unseen_R_at_1")
    assert sorted(unseen) == [1, 2, 3] and sorted(history("unseen_mAP")) == [1, 2, 3]
    best = max(step for step, flag in history("is_best").items() if flag == 1.0)
    assert unseen[best] == pytest.approx(evaluated[0].metrics[C.recall_at(1)], abs=1e-6)
    assert history("unseen_mAP")[best] == pytest.approx(evaluated[0].metrics[C.METRIC_MAP], abs=1e-6)
    # Done once: evaluating again logs nothing new.
    run_evaluate(config, context, runs=runs)
    assert len(client.get_metric_history(run_id, "unseen_R_at_1")) == 3
    series = convergence_series(context.tracking_uri, "per-epoch")
    assert set(series["epochs"]) == {"per_epoch_pa", "per_epoch_pa unseen"}
    assert series["epochs"]["per_epoch_pa unseen"].accompanies == "per_epoch_pa"   # drawn dashed in its colour
    assert series["seconds"]["per_epoch_pa unseen"][1].tolist() == [unseen[s] for s in (1, 2, 3)]
