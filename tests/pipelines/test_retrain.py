"""`chipmatch retrain`, `promote`, `rollback` and `search` on the live index, end to end: the real
CLI on a real Ray session, a real sqlite MLflow store and registry, real FAISS indexes.

Imagery arrives as batches of rendered synthetic vehicles (tiny preset) in a manifest table
(`data.source=manifest`): each batch's files live under their own folder, so their keys sort
after the earlier ones and a new version can reuse every full shard of the previous one.

The heavy tests share one world (module fixture: the bootstrap) and run in file order, each one
reading the state it starts from rather than assuming it: cycle 1 (with the three injected
faults), cycle 3 (no new imagery), cycle 2 (a worse challenger), the lock, promote/rollback.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from components.release import decide, read_pointer, retrain_lock
from components.storage import Store
from components.synthetic import render_item, synthetic_items
from components.tracking import registry
from pipelines import cli
from pipelines.retrain import BUSY_EXIT_CODE, FAULT_ENV, FAULT_POINTS, InjectedFault
from tests.conftest import _start_shared_ray

NAME = "cars"
# Tolerances generous enough that cycle 1's gate is decided by the primary metric; the glob
# exercises gate.decide's expansion over the per-superclass metrics.
GUARDED = '{"benchmark/R@1": 1.0, "benchmark/mAP/superclass/*": 1.0, "new/mAP": 1.0}'
WORSE = ("retrain.recipe=config", "train.epochs=1", "train.lr=10.0")   # one epoch at a learning rate that diverges


class World:
    """A storage root, an imagery table that grows by batches, and the CLI on top."""

    def __init__(self, root: Path):
        self.root = root
        self.store_root = root / "store"
        self.table = root / "imagery" / "chips.csv"
        self.table.parent.mkdir(parents=True)
        by_class = defaultdict(list)
        for item in synthetic_items("tiny"):
            by_class[item.model_index].append(item)
        self.classes = [by_class[i] for i in sorted(by_class)]
        self.rows: list[dict[str, str]] = []

    def add_batch(self, batch: str, classes: range, images: slice = slice(None)) -> None:
        """Render the `images` of each class in `classes` under imagery/<batch>/ and list them."""
        for items in (self.classes[i] for i in classes):
            for item in items[images]:
                relative = f"{batch}/{item.key}.png"
                path = self.table.parent / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                buffer = io.BytesIO()
                Image.fromarray(render_item(item)).save(buffer, format="PNG")
                path.write_bytes(buffer.getvalue())
                self.rows.append({"path": relative, "label": item.label, "superclass": item.superclass})
        with open(self.table, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["path", "label", "superclass"])
            writer.writeheader()
            writer.writerows(self.rows)

    def overrides(self, *extra: str) -> list[str]:
        return [
            "data.source=manifest", f"data.path={self.table}", f"data.name={NAME}",
            f"storage.root={self.store_root}", "shard.samples_per_shard=40", "shard.channels=1",
            "split.seen_fraction=0.6", "split.val_fraction=0.15",
            "runs=[{name: base, loss: triplet}]", "train.epochs=2", "train.lr=0.002",
            "train.cpus_per_worker=1", "train.loader_workers=0", "train.classes_per_batch=8",
            "train.images_per_class=4", "evaluate.taps=[embedding]", "evaluate.ks=[1,2,4]",
            "tracking.experiment=retrain-test", f"retrain.name={NAME}", "retrain.margin=0.0",
            f"retrain.guarded={GUARDED}", *extra,
        ]

    def cli(self, capsys, command: str, *extra: str, flags: tuple[str, ...] = ()) -> tuple[int, dict]:
        capsys.readouterr()
        code = cli.main([command, "--json", "--verbose", *flags, *self.overrides(*extra)])
        lines = capsys.readouterr().out.strip().splitlines()
        return code, json.loads(lines[-1])

    @property
    def store(self) -> Store:
        return Store(str(self.store_root))

    @property
    def tracking(self) -> str:
        return f"sqlite:///{self.store_root}/mlflow.db"

    def champion(self) -> int | None:
        found = registry.by_alias(self.tracking, NAME, registry.CHAMPION)
        return found.version if found else None

    def previous(self) -> int | None:
        found = registry.by_alias(self.tracking, NAME, registry.PREVIOUS)
        return found.version if found else None

    def live_state(self) -> dict[str, str]:
        """sha256 of the pointer and of every file of the index it names."""
        pointer_path = self.store_root / "indexes" / NAME / "LIVE.json"
        state = {"LIVE.json": _sha(pointer_path)}
        pointer = read_pointer(self.store, NAME)
        assert pointer is not None
        folder = self.store_root / pointer.live.index
        state.update({str(p.relative_to(folder)): _sha(p) for p in sorted(folder.rglob("*")) if p.is_file()})
        return state

    def files(self) -> dict[str, tuple[int, int]]:
        """Every file under the storage root but the MLflow database (size, mtime)."""
        return {str(p.relative_to(self.store_root)): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in self.store_root.rglob("*") if p.is_file() and not p.name.startswith("mlflow.db")}

    def decision_runs(self) -> list:
        client = MlflowClient(self.tracking)
        experiment = client.get_experiment_by_name(f"retrain-{NAME}")
        return [] if experiment is None else client.search_runs([experiment.experiment_id])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shard_files(world: World) -> set[str]:
    return {p.name for p in (world.store_root / "shards").iterdir() if ".tmp-" not in p.name}


def _manifest(uri: str) -> dict:
    return json.loads(Path(uri).read_text())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The bootstrap: 14 classes of imagery, the first retrain trains and promotes version 1."""
    _start_shared_ray()
    world = World(tmp_path_factory.mktemp("retrain"))
    world.add_batch("batch1", range(0, 14))
    code = cli.main(["retrain", "--verbose", *world.overrides()])
    assert code == 0
    assert world.champion() == 1 and world.previous() is None
    return world


@pytest.mark.slow
def test_bootstrap_promotes_the_first_model_and_search_uses_the_live_index(world, capsys, tmp_path):
    [run] = [r for r in world.decision_runs() if r.data.tags["decision"] == "bootstrap"]
    pointer = read_pointer(world.store, NAME)
    assert pointer is not None and pointer.sequence == 1
    version = registry.get_version(world.tracking, NAME, 1)
    assert version is not None and version.run_id == run.data.tags[registry.TAG_CHALLENGER_RUN]
    query = tmp_path / "query.npy"
    np.save(query, np.random.default_rng(0).standard_normal(128).astype(np.float32))
    code, result = world.cli(capsys, "search", flags=("--embedding", str(query), "-k", "3"))
    assert code == 0 and result["live"] is True
    assert result["index"] == world.store.uri_of(pointer.live.index) and result["counts"]["results"] == 3


@pytest.mark.slow
def test_cycle1_new_imagery_promotes_and_a_killed_retrain_changes_nothing_until_rerun(world, capsys, monkeypatch):
    champion_before, live_before = world.champion(), world.live_state()
    parent = json.loads((world.store_root / "datasets" / NAME / "LATEST.json").read_text())["version"]
    shards_before = _shard_files(world)
    world.add_batch("batch2", range(14, 20))     # six new classes
    world.add_batch("batch2", range(0, 14), slice(0, 2))   # and more images of the known ones (new keys)

    for point in FAULT_POINTS[:3]:   # killed after training, mid index build, just before the switch
        monkeypatch.setenv(FAULT_ENV, point)
        with pytest.raises(InjectedFault, match=point):
            cli.main(["retrain", "--verbose", *world.overrides()])
        assert world.champion() == champion_before, point
        assert world.live_state() == live_before, point
    monkeypatch.delenv(FAULT_ENV)

    code, result = world.cli(capsys, "retrain")
    assert code == 0, result
    # A new version whose new shards are the only ones written; the full old ones are reused.
    new, old = _manifest(result["manifest"]), _manifest(str(world.store_root / "datasets" / NAME / parent / "manifest.json"))
    assert new["parent"] == parent and result["dataset_version"] != parent
    new_names = {Path(s["name"]).name for s in new["shards"]}
    old_names = {Path(s["name"]).name for s in old["shards"]}
    assert new_names & old_names, "no shard of the previous version was reused"
    assert _shard_files(world) - shards_before == new_names - old_names
    # The decision is the gate's on the recorded numbers, and it is recorded in MLflow.
    metrics = result["metrics"]
    expected = decide(metrics["champion"], metrics["challenger"], primary="benchmark/mAP", min_improvement=0.0,
                      guarded=json.loads(GUARDED))
    assert result["promoted"] == expected.promote and result["reason"] == expected.reason
    assert any(k.startswith("benchmark/mAP/superclass/") for k in metrics["champion"])
    run = MlflowClient(world.tracking).get_run(result["mlflow_run_id"])
    assert run.data.tags["decision"] == result["decision"]
    assert run.data.metrics["challenger/benchmark/mAP"] == pytest.approx(metrics["challenger"]["benchmark/mAP"])
    assert run.data.metrics["champion/benchmark/mAP"] == pytest.approx(metrics["champion"]["benchmark/mAP"])
    # A fine-tuned challenger on more data beats the two-epoch bootstrap: alias and pointer move.
    assert result["decision"] == "promote", result["reason"]
    assert world.champion() == result["version"] == champion_before + 1
    assert world.previous() == champion_before
    pointer = read_pointer(world.store, NAME)
    assert pointer is not None and world.store.uri_of(pointer.live.index) == result["index"]
    assert pointer.previous[0].index != pointer.live.index
    assert len(registry.versions(world.tracking, NAME)) == 2   # the faulted attempts registered nothing extra


@pytest.mark.slow
def test_cycle3_no_new_imagery_is_a_no_op(world, capsys):
    files, runs, live = world.files(), len(world.decision_runs()), world.live_state()
    versions = len(registry.versions(world.tracking, NAME))
    code, result = world.cli(capsys, "retrain")
    assert code == 0 and result["decision"] == "no_change" and result["promoted"] is False
    assert world.files() == files and world.live_state() == live
    assert len(world.decision_runs()) == runs and len(registry.versions(world.tracking, NAME)) == versions


@pytest.mark.slow
def test_cycle2_a_worse_challenger_is_not_promoted(world, capsys):
    champion, previous, live = world.champion(), world.previous(), world.live_state()
    world.add_batch("batch3", range(20, 24))
    code, result = world.cli(capsys, "retrain", *WORSE)
    assert code == 0 and result["decision"] == "not_promoted" and result["promoted"] is False, result
    assert world.champion() == champion and world.previous() == previous and world.live_state() == live
    metrics = result["metrics"]
    if all(np.isfinite(v) for side in metrics.values() for v in side.values()):
        assert not decide(metrics["champion"], metrics["challenger"], primary="benchmark/mAP", min_improvement=0.0,
                          guarded=json.loads(GUARDED)).promote
    assert MlflowClient(world.tracking).get_run(result["mlflow_run_id"]).data.tags["decision"] == "not_promoted"
    # The same pair is not gated again every night; a changed gate is a new attempt (training reused).
    code, again = world.cli(capsys, "retrain", *WORSE)
    assert code == 0 and again["decision"] == "no_change" and world.live_state() == live
    code, regated = world.cli(capsys, "retrain", *WORSE, "retrain.margin=0.5")
    assert code == 0 and regated["decision"] == "not_promoted" and regated["mlflow_run_id"] != result["mlflow_run_id"]
    assert regated["challenger"] == result["challenger"] and world.live_state() == live


@pytest.mark.slow
def test_a_second_retrain_waits_for_the_lock_or_exits_with_a_clear_message(world, capsys):
    held = retrain_lock(world.store, purpose="retrain")   # this process is the retrain in progress
    held.acquire()
    try:
        started = time.monotonic()   # a second `chipmatch retrain`, as the scheduler starts it: its own process
        second = subprocess.run([sys.executable, "-m", "pipelines.cli", "retrain", "--json", "--verbose",
                                 *world.overrides("retrain.lock_wait=1")], capture_output=True, text=True, timeout=300,
                                cwd=Path(cli.__file__).resolve().parents[1])
        result = json.loads(second.stdout.strip().splitlines()[-1])
        assert second.returncode == BUSY_EXIT_CODE and result["exit_code"] == BUSY_EXIT_CODE, second.stderr[-2000:]
        assert "another retrain" in result["error"] and f"pid {os.getpid()}" in result["error"]
        assert time.monotonic() - started < 300
    finally:
        # 5 s: the retrain below reaches the lock within about a second, so it must wait (a
        # retrain that did not wait would exit 5).
        releaser = threading.Timer(5.0, held.release)
        releaser.start()
    # Waits until the holder is done, then finds cycle 2's pair already decided (no training).
    code, result = world.cli(capsys, "retrain", *WORSE, "retrain.lock_wait=60")
    releaser.join()
    assert code == 0 and result["decision"] == "no_change", result


@pytest.mark.slow
def test_rollback_and_promote_round_trip(world, capsys, monkeypatch):
    champion, previous = world.champion(), world.previous()
    assert champion is not None and previous is not None
    before = read_pointer(world.store, NAME)
    assert before is not None
    live_index, live = before.live.index, world.live_state()

    code, result = world.cli(capsys, "rollback")
    assert code == 0 and result["champion_version"] == previous
    assert world.champion() == previous and world.previous() is None
    after_rollback = read_pointer(world.store, NAME)
    assert after_rollback is not None and after_rollback.previous == ()
    assert after_rollback.live.index == before.previous[0].index and result["index"] == world.store.uri_of(
        before.previous[0].index)
    code, result = world.cli(capsys, "rollback")   # nothing older to return to: a clear error, nothing moves
    assert code == 3 and "no previous generation" in result["error"] and world.champion() == previous

    code, result = world.cli(capsys, "promote", flags=("--version", str(champion)))
    assert code == 0 and result["champion_version"] == champion
    assert world.champion() == champion and world.previous() == previous
    pointer = read_pointer(world.store, NAME)
    assert pointer is not None and pointer.live.index == live_index
    after = world.live_state()
    assert {k: v for k, v in after.items() if k != "LIVE.json"} == {k: v for k, v in live.items() if k != "LIVE.json"}

    # A failure after the switch, before the aliases move: the old index is put back in service.
    before = read_pointer(world.store, NAME)
    assert before is not None
    monkeypatch.setenv(FAULT_ENV, "after_switch")
    with pytest.raises(InjectedFault, match="after_switch"):
        cli.main(["promote", "--verbose", "--version", str(previous), *world.overrides()])
    monkeypatch.delenv(FAULT_ENV)
    assert world.champion() == champion and world.previous() == previous
    pointer = read_pointer(world.store, NAME)
    assert pointer is not None and pointer.live.index == before.live.index
    assert {k: v for k, v in world.live_state().items() if k != "LIVE.json"} == \
        {k: v for k, v in live.items() if k != "LIVE.json"}
    # Nothing was pruned by the undone switch: every generation the pointer knew is still there.
    known = [before.live, *before.previous, *before.retired]
    assert all((world.store_root / g.index / "index.json").is_file() for g in known)

    code, result = world.cli(capsys, "promote", flags=("--version", "99"))
    assert code == 2 and "no such version" in result["error"]


@pytest.mark.slow
def test_a_failed_first_promotion_leaves_no_pointer(world, capsys, monkeypatch):
    """Another registered model in the same store, promoted for the first time (its index is
    the champion's, reused): a failure after the switch removes the pointer it created."""
    champion = registry.by_alias(world.tracking, NAME, registry.CHAMPION)
    assert champion is not None
    other = registry.register(world.tracking, "cars-copy", champion.source, champion.run_id or "", champion.tags)
    pointer_file = world.store_root / "indexes" / "cars-copy" / "LIVE.json"
    monkeypatch.setenv(FAULT_ENV, "after_switch")
    with pytest.raises(InjectedFault):
        cli.main(["promote", "--verbose", "--version", str(other.version), *world.overrides("retrain.name=cars-copy")])
    monkeypatch.delenv(FAULT_ENV)
    assert not pointer_file.exists() and registry.by_alias(world.tracking, "cars-copy", registry.CHAMPION) is None
    code, result = world.cli(capsys, "promote", "retrain.name=cars-copy", flags=("--version", str(other.version)))
    assert code == 0 and pointer_file.exists() and result["previous_version"] is None
    assert registry.by_alias(world.tracking, "cars-copy", registry.CHAMPION) == other
    assert read_pointer(world.store, "cars-copy").live.index == read_pointer(world.store, NAME).live.index  # type: ignore[union-attr]


@pytest.mark.parametrize("override,names", [
    ('retrain.guarded={"benchmark/R@3": 0.1}', ["retrain.guarded", "evaluate.ks"]),
    ("retrain.run=nope", ["retrain.run", "base"]),
    ("retrain.primary=mAP", ["retrain.primary", "benchmark/<metric>"]),
    ('retrain.guarded={"new/mAP": -1}', ["retrain.guarded", "tolerance"]),
])
def test_retrain_settings_are_checked_before_any_work(tmp_path, capsys, override, names):
    """Bad `retrain` settings exit 2 naming the key, before the lock, Ray or any output."""
    capsys.readouterr()
    code = cli.main(["retrain", "--json", "--verbose", "data=synthetic_tiny", f"storage.root={tmp_path}",
                     "runs=[{name: base, loss: triplet}]", override])
    error = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
    assert code == 2, error
    assert all(name in error for name in names), error
    assert not (tmp_path / "locks").exists() and not (tmp_path / "datasets").exists()


def test_an_unknown_fault_point_is_a_config_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "after_lunch")
    code = cli.main(["retrain", "--verbose", "data=synthetic_tiny", f"storage.root={tmp_path}"])
    assert code == 2 and "after_training" in capsys.readouterr().err
