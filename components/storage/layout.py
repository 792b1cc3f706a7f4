"""Where every output lives under the storage root, named in one place.

    datasets/<dataset>/<version>/manifest.json     a published version (written last)
    datasets/<dataset>/LATEST.json                 the newest version
    shards/<split>-<content hash>.tar              shared by every version that holds them
    runs/<dataset>/<version>/<run key>/            one training run: model/, result.json,
                                                   evaluation-<settings>.json
    ray_results/                                   Ray Train's own run folders (checkpoints)
    mlartifacts/                                   MLflow artifacts (with the default sqlite store)
    evaluation/<experiment>/pr_curves.png          all runs of an experiment on one plot
    indexes/<dataset>/<version>/<run key>/<factory>-<shards>/   a FAISS index (+ source.json)
    indexes/<name>/LIVE.json                       the index that answers searches for <name>
    locks/<name>/<claim>.json                      claims of the retrain lock
    tune/<sweep>/<key>/                            a sweep: best.yaml, result.json, ray_tune/,
                                                   trials/<trial>/model, trials/<trial>/ray_train
    compare/<experiment>.md, .csv                  the comparison table
    logs/<stage>-<time>.log                        Ray's internal output of a stage

Paths are relative to the root and '/'-separated (what `Store` takes). Stages ask this module
for a path instead of spelling it, and never recover one by cutting a URI apart: a run's
folder travels with the run.

Every stage output has a *completion marker*, a file written last and atomically (a manifest,
`result.json`, an evaluation record): `reuse_when_complete` is the one "skip when done" check.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from components import constants as C
from components.storage.store import Store

DATASETS_DIR = "datasets"
SHARDS_DIR = "shards"
RUNS_DIR = "runs"
INDEXES_DIR = "indexes"
TUNE_DIR = "tune"
COMPARE_DIR = "compare"
EVALUATION_DIR = "evaluation"
LOGS_DIR = "logs"
LOCKS_DIR = "locks"
LIVE_FILENAME = "LIVE.json"
RAY_RESULTS_DIR = "ray_results"
MLFLOW_ARTIFACTS_DIR = "mlartifacts"
LATEST_FILENAME = "LATEST.json"
RESULT_FILENAME = "result.json"       # completion marker of a training run and of a sweep
MODEL_DIR = "model"                   # a run's model bundle folder
BEST_CONFIG_FILENAME = "best.yaml"
INDEX_SOURCE_FILENAME = "source.json"  # in an index folder: the model and dataset it was built from


def reuse_when_complete(store: Store, marker: str, accept: Callable[[Any], bool] | None = None) -> Any | None:
    """The parsed JSON of `marker` when the output it closes is complete and reusable, else None.

    Outputs are written before their marker, and the marker atomically, so an existing marker
    means a complete output. `accept` can refuse one that is complete but stale (e.g. built
    from other inputs, or missing a file it lists); the stage then rebuilds it.
    """
    if not store.exists(marker):
        return None
    data = store.read_json(marker)
    if accept is not None and not accept(data):
        return None
    return data


@dataclass(frozen=True)
class RunPaths:
    """The folder of one training run: `runs/<dataset>/<version>/<run key>`."""

    dataset: str
    version: str
    run_key: str

    @property
    def folder(self) -> str:
        return f"{RUNS_DIR}/{self.dataset}/{self.version}/{self.run_key}"

    @property
    def result(self) -> str:
        return f"{self.folder}/{RESULT_FILENAME}"

    @property
    def model(self) -> str:
        return f"{self.folder}/{MODEL_DIR}"

    def evaluation(self, settings_key: str) -> str:
        return f"{self.folder}/{EVALUATION_DIR}-{settings_key}.json"

    def index(self, factory: str, num_shards: int, tap: str = C.INDEX_TAP_DEFAULT) -> str:
        """The index folder; an index of another feature layer than the embedding is named for it."""
        slug = re.sub(r"[^A-Za-z0-9]+", "_", factory).strip("_")
        layer = "" if tap == C.INDEX_TAP_DEFAULT else f"-{tap}"
        return f"{INDEXES_DIR}/{self.dataset}/{self.version}/{self.run_key}/{slug}-{num_shards}{layer}"


@dataclass(frozen=True)
class SweepPaths:
    """The folder of one sweep: `tune/<sweep>/<key>`."""

    sweep: str
    key: str

    @property
    def folder(self) -> str:
        return f"{TUNE_DIR}/{self.sweep}/{self.key}"

    @property
    def result(self) -> str:
        return f"{self.folder}/{RESULT_FILENAME}"

    @property
    def best_config(self) -> str:
        return f"{self.folder}/{BEST_CONFIG_FILENAME}"

    @property
    def ray_tune(self) -> str:
        return self.folder   # Tune names its experiment folder `ray_tune` below this

    def trial_model(self, trial_id: str) -> str:
        return f"{self.folder}/trials/{trial_id}/{MODEL_DIR}"

    def trial_ray_train(self, trial_id: str) -> str:
        return f"{self.folder}/trials/{trial_id}/ray_train"


class Layout:
    """Relative paths of every stage output (see the module docstring)."""

    # -- datasets and shards --------------------------------------------------------------
    @staticmethod
    def manifest(dataset: str, version: str) -> str:
        return f"{DATASETS_DIR}/{dataset}/{version}/{C.MANIFEST_FILENAME}"

    @staticmethod
    def latest(dataset: str) -> str:
        return f"{DATASETS_DIR}/{dataset}/{LATEST_FILENAME}"

    @staticmethod
    def dataset_versions(dataset: str) -> str:
        return f"{DATASETS_DIR}/{dataset}"

    @staticmethod
    def shard(split: str, digest: str) -> str:
        return f"{SHARDS_DIR}/{split}-{digest}.tar"

    @staticmethod
    def split_manifest_uri(uri: str) -> tuple[str, str]:
        """(root URI, relative manifest path) of a manifest URI (or of its version folder).

        The one place that reads the layout back out of a URI, for callers that only have
        the URI (`train.dataset`, an index's source record)."""
        uri = uri.rstrip("/")
        if not uri.endswith(C.MANIFEST_FILENAME):
            uri = f"{uri}/{C.MANIFEST_FILENAME}"
        parts = uri.split("/")
        if len(parts) < 5 or parts[-4] != DATASETS_DIR:
            raise ValueError(f"{uri!r} is not a dataset manifest URI "
                             f"(…/{DATASETS_DIR}/<name>/<version>/{C.MANIFEST_FILENAME})")
        return "/".join(parts[:-4]) or "/", posixpath.join(*parts[-4:])

    # -- runs, evaluations, indexes -------------------------------------------------------
    @staticmethod
    def run(dataset: str, version: str, run_key: str) -> RunPaths:
        return RunPaths(dataset, version, run_key)

    @staticmethod
    def ray_results() -> str:
        return RAY_RESULTS_DIR

    @staticmethod
    def mlflow_artifacts() -> str:
        return MLFLOW_ARTIFACTS_DIR

    @staticmethod
    def pr_curves(experiment: str) -> str:
        return f"{EVALUATION_DIR}/{experiment}/pr_curves.png"

    @staticmethod
    def live_index(name: str) -> str:
        return f"{INDEXES_DIR}/{name}/{LIVE_FILENAME}"

    @staticmethod
    def lock_claims(name: str) -> str:
        return f"{LOCKS_DIR}/{name}"

    # -- sweeps, comparisons, logs --------------------------------------------------------
    @staticmethod
    def sweep(name: str, key: str) -> SweepPaths:
        return SweepPaths(name, key)

    @staticmethod
    def compare(experiment: str, extension: str) -> str:
        return f"{COMPARE_DIR}/{experiment}.{extension}"

    @staticmethod
    def log(stage: str, stamp: str) -> str:
        return f"{LOGS_DIR}/{stage}-{stamp}.log"
