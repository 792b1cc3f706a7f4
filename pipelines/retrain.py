"""`chipmatch retrain`, `chipmatch promote --version N`, `chipmatch rollback`: a model and its index
put into service, only when it is better, never half-way.

`run_retrain`, under the retrain lock on the storage root (`components.release.lock`):

1. ingest the configured source (`pipelines.ingest.run_ingest`): new imagery makes a new
   dataset version that reuses every unchanged shard. When that version is the champion's, or
   this champion was already gated against a challenger of it and kept, the result is
   ``{"decision": "no_change"}`` and nothing else is written;
2. train the challenger (`pipelines.train.run_train` on a one-run config): the recipe recorded on
   the champion (`retrain.recipe: champion`) or `retrain.run` of this config (`config`),
   fine-tuned from the champion's model bundle (`train.init_from`); with no champion yet, the
   first run trains the recipe from scratch and promotes it (``"decision": "bootstrap"``);
3. evaluate champion and challenger on the same two benchmarks: ``benchmark/*`` the unseen
   classes of the champion's version (their side never changes, so the numbers compare across
   retrains) and ``new/*`` the new version's unseen classes; `components.release.gate.decide`
   with `retrain.primary`, `retrain.margin` and `retrain.guarded`. The decision, its reason and
   both sets of numbers are an MLflow run of the experiment ``retrain-<retrain.name>``;
4. on promotion: register the challenger as a version of the registered model
   ``<retrain.name>``, build its index (the `index` section), switch the live pointer
   ``indexes/<retrain.name>/LIVE.json`` and only then move the aliases (``previous`` to the
   old champion, ``champion`` to the new version), then prune old index generations.

The aliases move after the pointer, never before: the champion alias is what a re-run trusts,
so it names a new model only once that model's index is in service. Every step before the
switch writes only new, content-addressed outputs (a dataset version, a run folder, an
evaluation record, a model version without alias, an index folder nothing points at), so a
failure anywhere leaves alias, pointer and live index as they were, and the re-run reuses
what was finished. If moving the aliases fails after the switch, the pointer is rolled back.

Like `pipelines.run`, this module wires stages together: it calls their public `run_*`
functions (ingest, train, index) and nothing else of theirs.

`run_promote` puts model version N into service the same way (index built or reused, switch,
aliases); `run_rollback` returns pointer and aliases to the previous generation. Both hold the
same lock.

Test hook (for fault-injection tests, not for operators): with ``CHIPMATCH_FAULT_AT=<step>``
in the driver's environment the command raises `InjectedFault` at that step:
``after_training`` (challenger trained, nothing evaluated), ``mid_index_build`` (the index's
shards written, its manifest not: the on-disk state of a build killed mid-way, made by
removing the manifest of the just-built index, since the index stage offers no hook inside
the build; it fires only when this run builds the index, not when it reuses one),
``before_switch`` (index complete, pointer not yet switched) and ``after_switch`` (pointer
switched and ``previous`` moved, ``champion`` not yet: the pointer is rolled back and
``previous`` put back, so the old index is live again;
LIVE.json then records the switch and the rollback in its history; after a first switch, the
pointer is removed).

Exit codes (besides the CLI's 2/3/4): 5 when the lock is held by another retrain, promote
or rollback and did not come free within `retrain.lock_wait` seconds (`RetrainBusy`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.table import Table

from components import constants as C
from components.errors import ChipmatchError, ConfigError, MissingDataError
from components.evaluation.model_eval import evaluate_model
from components.index.manifest import INDEX_MANIFEST_FILENAME
from components.release import LockBusy, decide, prune_generations, read_pointer, retrain_lock, switch_live
from components.release import rollback as rollback_pointer
from components.release.config import BENCHMARK_PREFIX, NEW_PREFIX, RetrainConfig
from components.storage import Layout, reuse_when_complete, sha256_json
from components.storage.layout import INDEX_SOURCE_FILENAME
from components.tracking import RunLogger, create_run, open_experiment, registry
from pipelines import index, ingest, train
from pipelines.config import Config, LossConfig, ModelConfig, RunSpec, TrainConfig
from pipelines.context import StageContext, stage_context
from pipelines.ray_session import cluster_has_gpus
from pipelines.runs import EXECUTION_ONLY, TrainedRun, without_later_defaults

FAULT_ENV = "CHIPMATCH_FAULT_AT"
FAULT_POINTS = ("after_training", "mid_index_build", "before_switch", "after_switch")
BUSY_EXIT_CODE = 5
SUPERCLASS_METRIC = "mAP/superclass/"
TAG_ATTEMPT = "attempt"   # decision-run tag: hash of the recipe and gate settings

# Train settings that say how a run executes on this cluster, not what it learns: taken from
# the current config, never from the recipe recorded on the champion.
EXECUTION_FIELDS = EXECUTION_ONLY | {"num_workers", "use_gpu", "cpus_per_worker", "threads_per_worker", "init_from",
                                     "eval_batch_size"}


class RetrainBusy(ChipmatchError):
    """Another retrain, promote or rollback holds the lock on the storage root."""

    exit_code = BUSY_EXIT_CODE


class InjectedFault(RuntimeError):
    """Raised at the step named by CHIPMATCH_FAULT_AT (a test hook)."""


def inject_fault(step: str) -> None:
    """Raise `InjectedFault` when CHIPMATCH_FAULT_AT names `step` (see the module docstring)."""
    wanted = os.environ.get(FAULT_ENV)
    if wanted and wanted not in FAULT_POINTS:
        raise ConfigError(f"{FAULT_ENV}={wanted!r} names no fault point; valid points: {list(FAULT_POINTS)} "
                          f"(or unset {FAULT_ENV})")
    if wanted == step:
        raise InjectedFault(f"injected fault ({FAULT_ENV}={step})")


# --- settings ------------------------------------------------------------------------------

def check_settings(config: Config) -> None:
    """What the `retrain` section names must exist: checked before the lock and any work."""
    inject_fault("")   # an unknown fault point is named now, not after training
    recipe_run(config)
    ks = sorted(set(config.evaluate.ks))
    known = [C.METRIC_MAP, C.METRIC_MAP_AT_R, C.METRIC_R_PRECISION, *[C.recall_at(k) for k in ks]]
    names = [("retrain.primary", config.retrain.primary)] + [("retrain.guarded", k) for k in config.retrain.guarded]
    for key, name in names:
        metric = name.removeprefix(BENCHMARK_PREFIX).removeprefix(NEW_PREFIX)
        if metric in known or metric.startswith(SUPERCLASS_METRIC) or set("*?[") & set(metric):
            continue
        raise ConfigError(f"{key}: {name!r} is not a metric retrain records; use benchmark/ or new/ followed by one of "
                          f"{known} or '{SUPERCLASS_METRIC}<superclass>' (R@K needs K in evaluate.ks={ks})")


def recipe_run(config: Config) -> RunSpec:
    """The run of this config that is the recipe (`retrain.run`, default the first run)."""
    specs = config.runs or [RunSpec(name=config.loss.name, loss=config.loss)]
    wanted = config.retrain.run
    if wanted is None:
        return specs[0]
    for spec in specs:
        if spec.name == wanted:
            return spec
    raise ConfigError(f"retrain.run={wanted!r} is not a run of this config; runs: {[s.name for s in specs]}. "
                      "Set retrain.run to one of them (or leave it unset for the first)")


def config_recipe(config: Config) -> dict[str, Any]:
    """What a model learns from: model, loss and the learning part of the train settings."""
    spec = recipe_run(config)
    settings = TrainConfig(**{**config.train.model_dump(), **spec.overrides})
    return {"run": spec.name, "model": config.model.model_dump(), "loss": spec.loss.model_dump(),
            "train": without_later_defaults(settings.model_dump(exclude=EXECUTION_FIELDS))}


def challenger_config(config: Config, recipe: dict[str, Any], init_from: str | None, dataset_uri: str) -> Config:
    """A config with one run: `recipe`, fine-tuned from `init_from`, on `dataset_uri`, executed
    with this config's execution settings (workers, CPUs, loaders)."""
    execution = config.train.model_dump(include=EXECUTION_FIELDS)
    settings = TrainConfig(**{**recipe["train"], **execution, "init_from": init_from, "dataset": dataset_uri})
    loss = LossConfig(**recipe["loss"])
    return config.model_copy(update={"model": ModelConfig(**recipe["model"]), "loss": loss, "train": settings,
                                     "runs": [RunSpec(name=recipe["run"], loss=loss)], "seeds": [], "tune": None})


# --- the lock ------------------------------------------------------------------------------

@contextmanager
def held_lock(context: StageContext, settings: RetrainConfig, purpose: str) -> Iterator[None]:
    lock = retrain_lock(context.store, stale_after=settings.lock_stale_after, wait=settings.lock_wait, purpose=purpose)
    try:
        lock.acquire()
    except LockBusy as exc:
        raise RetrainBusy(f"another retrain, promote or rollback is running: {exc}") from None
    try:
        yield
    finally:
        lock.release()


# --- measuring -----------------------------------------------------------------------------

def _run_of(version: registry.ModelVersion) -> TrainedRun:
    """A registered version as the trained run it came from (its folder, model and MLflow run)."""
    tags = version.tags
    missing = [t for t in (registry.TAG_DATASET, registry.TAG_DATASET_VERSION, registry.TAG_RUN_KEY) if t not in tags]
    if missing or version.run_id is None:
        raise MissingDataError(f"model version {version.name} v{version.version} lacks the tags {missing} (or its run id) "
                               "that chipmatch retrain records; register versions through chipmatch retrain")
    recipe = version.recipe()
    paths = Layout.run(tags[registry.TAG_DATASET], tags[registry.TAG_DATASET_VERSION], tags[registry.TAG_RUN_KEY])
    return TrainedRun(tags.get(registry.TAG_RUN_NAME, recipe["run"]), recipe["loss"]["name"], version.source,
                      version.run_id, {}, skipped=True, paths=paths)


def measure(config: Config, context: StageContext, run: TrainedRun, manifests: dict[str, str]) -> dict[str, float]:
    """`run`'s retrieval metrics on each manifest, prefixed (``benchmark/``, ``new/``); each
    evaluation is recorded in the run's folder and reused by a re-run."""
    ks = tuple(sorted(set(config.evaluate.ks)))
    use_gpu = config.evaluate.use_gpu if config.evaluate.use_gpu is not None else cluster_has_gpus()
    metrics: dict[str, float] = {}
    for prefix, manifest in manifests.items():
        key = sha256_json({"retrain": True, "model": run.model_uri, "dataset": manifest, "ks": ks})[:12]
        record_path = run.paths.evaluation(f"retrain-{key}")
        saved = reuse_when_complete(context.store, record_path)
        if saved is None:
            context.console.log(f"[retrain] evaluating {run.name} ({run.model_uri}) on {manifest}")
            result = evaluate_model(manifest, run.model_uri, ("embedding",), ks, config.evaluate.batch_size,
                                    config.evaluate.num_actors, use_gpu)
            saved = {"model": run.model_uri, "dataset": manifest,
                     "metrics": {**_gateable(result.metrics["embedding"]), **_superclass_map(result)}}
            context.store.write_json(record_path, saved)
        metrics.update({prefix + name: float(value) for name, value in saved["metrics"].items()})
    return metrics


def _gateable(metrics: dict[str, float]) -> dict[str, float]:
    """The retrieval metrics, without the evaluator's query counts (not quality measures)."""
    return {name: value for name, value in metrics.items() if not name.startswith("num_queries")}


def _superclass_map(result) -> dict[str, float]:
    """Mean AP of the classes of each superclass (``mAP/superclass/<name>``), where items have one."""
    per_class = result.per_class_ap.get("embedding", {})
    superclass_of = {label: meta.get(C.SUPERCLASS) for label, meta in zip(result.unseen.labels, result.unseen.metas)}
    groups: dict[str, list[float]] = {}
    for label, ap in per_class.items():
        superclass = superclass_of.get(label)
        if superclass:
            groups.setdefault(str(superclass), []).append(float(ap))
    return {f"{SUPERCLASS_METRIC}{name}": sum(values) / len(values) for name, values in sorted(groups.items())}


def gate(settings: RetrainConfig, champion: dict[str, float], challenger: dict[str, float]) -> dict[str, Any]:
    """`decide` on the recorded numbers; non-finite numbers (a diverged challenger) never promote."""
    broken = sorted(name for side in (champion, challenger) for name, value in side.items() if not math.isfinite(value))
    if broken:
        return {"promote": False, "reason": f"not promoted: metrics are not finite ({', '.join(broken)}): the model "
                                            "diverged or collapsed", "deltas": {}, "blocked_by": broken}
    try:
        decision = decide(champion, challenger, primary=settings.primary, min_improvement=settings.margin,
                          guarded=settings.guarded)
    except ValueError as exc:
        raise ConfigError(f"retrain.primary / retrain.guarded: {exc}") from None
    return {"promote": decision.promote, "reason": decision.reason, "deltas": decision.deltas,
            "blocked_by": list(decision.blocked_by)}


# --- putting a version into service --------------------------------------------------------

def build_index_for(config: Config, context: StageContext, version: registry.ModelVersion) -> str:
    """The index of `version`'s model over the dataset version it was trained on (the `index`
    section's factory); reused when complete (manifest and source record present)."""
    run = _run_of(version)
    folder = run.paths.index(config.index.factory, config.index.num_shards, config.index.tap)
    store = context.store
    if reuse_when_complete(store, f"{folder}/{INDEX_MANIFEST_FILENAME}") is not None \
            and store.exists(f"{folder}/{INDEX_SOURCE_FILENAME}"):
        context.console.log(f"[retrain] index of v{version.version} already built: {store.uri_of(folder)}")
        return store.uri_of(folder)
    context.dataset = version.tags[registry.TAG_DATASET_MANIFEST]
    built = index.run_index(config.model_copy(update={"index": config.index.model_copy(update={"run": None})}),
                            context, runs=[run])
    if os.environ.get(FAULT_ENV) == "mid_index_build":
        # The state a build killed between its shards and its manifest leaves (see the docstring).
        for name in (INDEX_SOURCE_FILENAME, INDEX_MANIFEST_FILENAME):
            if store.exists(f"{folder}/{name}"):
                store.delete(f"{folder}/{name}")
        inject_fault("mid_index_build")
    return built["index"]


def put_in_service(config: Config, context: StageContext, version: registry.ModelVersion) -> dict[str, Any]:
    """Index, then the live pointer, then the aliases (see the module docstring)."""
    settings, store = config.retrain, context.store
    old_champion = registry.by_alias(context.tracking_uri, settings.name, registry.CHAMPION)
    index_uri = build_index_for(config, context, version)
    inject_fault("before_switch")
    before = read_pointer(store, settings.name)
    # Not pruned yet: until the aliases have moved the switch may be undone, and the undo must
    # find every generation it had.
    pointer = switch_live(store, settings.name, index_uri, keep_generations=settings.keep_generations, prune=False)
    kept_previous = registry.by_alias(context.tracking_uri, settings.name, registry.PREVIOUS)
    previous = old_champion.version if old_champion and old_champion.version != version.version else None
    if previous is None and old_champion is not None:   # re-promoting the champion keeps its `previous`
        previous = kept_previous.version if kept_previous else None
    try:
        # set_champion's two steps, with the fault point between them (the worst place to fail).
        registry.set_previous(context.tracking_uri, settings.name, previous)
        inject_fault("after_switch")
        registry.set_alias(context.tracking_uri, settings.name, registry.CHAMPION, version.version)
    except Exception:
        if before is None:   # the first switch: no pointer existed, and none is left behind
            store.delete(Layout.live_index(settings.name))
        elif pointer.sequence != before.sequence:
            rollback_pointer(store, settings.name)   # the old index back in service, then the error
        # set_champion moves `previous` first: put it back where it was (or remove it).
        registry.set_previous(context.tracking_uri, settings.name, kept_previous.version if kept_previous else None)
        raise
    pruned = prune_generations(store, settings.name, keep_generations=settings.keep_generations)
    context.console.log(f"[retrain] {settings.name}@champion = v{version.version}; live index {index_uri}")
    return {"index": index_uri, "champion_version": version.version, "previous_version": previous,
            "pruned": pruned, "sequence": _reread_sequence(context, settings.name)}


def _reread_sequence(context: StageContext, name: str) -> int:
    pointer = read_pointer(context.store, name)
    return pointer.sequence if pointer else 0


# --- retrain -------------------------------------------------------------------------------

def run_retrain(config: Config, context: StageContext | Console | None = None) -> dict[str, Any]:
    context = stage_context(config, context)
    check_settings(config)
    with held_lock(context, config.retrain, "retrain"):
        return _retrain(config, context)


def _decisions_experiment(context: StageContext, settings: RetrainConfig) -> str:
    return open_experiment(context.tracking_uri, f"retrain-{settings.name}",
                           context.store.uri_of(context.layout.mlflow_artifacts()))


def _retrain(config: Config, context: StageContext) -> dict[str, Any]:
    settings, console = config.retrain, context.console
    champion = registry.by_alias(context.tracking_uri, settings.name, registry.CHAMPION)
    ingested = ingest.run_ingest(config, context)
    new_uri = ingested.manifest_uri
    base = {"stage": "retrain", "name": settings.name, "dataset": ingested.dataset, "dataset_version": ingested.version,
            "manifest": new_uri, "counts": {"shards_written": ingested.shards_written,
                                            "shards_reused": ingested.shards_reused},
            "champion_before": champion.version if champion else None,
            "champion_version": champion.version if champion else None}   # after the command (promotion: the new one)
    if champion is not None and champion.tags.get(registry.TAG_DATASET_VERSION) == ingested.version:
        console.log(f"[retrain] no new imagery since the champion's dataset version {ingested.version}: nothing to do")
        return {**base, "decision": "no_change", "promoted": False,
                "reason": f"dataset version {ingested.version} is the champion's (v{champion.version}): no new imagery"}
    experiment_id = _decisions_experiment(context, settings)
    recipe = champion.recipe() if champion is not None and settings.recipe == "champion" else config_recipe(config)
    # What a decision depends on besides the two models' data: a changed recipe or gate is a new attempt.
    attempt = sha256_json({"recipe": recipe, "primary": settings.primary, "margin": settings.margin,
                           "guarded": settings.guarded})[:16]
    if champion is not None:
        earlier = registry.decided_before(context.tracking_uri, experiment_id, {
            "dataset_version": ingested.version, registry.TAG_CHAMPION_VERSION: champion.version,
            TAG_ATTEMPT: attempt, registry.TAG_DECISION: "not_promoted"})
        if earlier is not None:
            console.log(f"[retrain] v{champion.version} was already gated against this recipe's challenger of version "
                        f"{ingested.version} and kept: nothing to do")
            return {**base, "decision": "no_change", "promoted": False,
                    "reason": f"a challenger of dataset version {ingested.version} with the same recipe and gate was "
                              f"already gated against v{champion.version} and not promoted ({earlier.get('reason', '')})"}

    challenger_cfg = challenger_config(config, recipe, champion.source if champion else None, new_uri)
    context.dataset = new_uri
    console.rule("[bold]retrain: challenger")
    [challenger] = train.run_train(challenger_cfg, context)
    inject_fault("after_training")

    console.rule("[bold]retrain: gate")
    if champion is None:
        manifests = {BENCHMARK_PREFIX: new_uri, NEW_PREFIX: new_uri}
        challenger_metrics = measure(config, context, challenger, manifests)
        champion_metrics: dict[str, float] = {}
        verdict = {"promote": True, "reason": "bootstrap: no champion yet, the first model is promoted",
                   "deltas": {}, "blocked_by": []}
        decision = "bootstrap"
    else:
        manifests = {BENCHMARK_PREFIX: champion.tags[registry.TAG_DATASET_MANIFEST], NEW_PREFIX: new_uri}
        champion_metrics = measure(config, context, _run_of(champion), manifests)
        challenger_metrics = measure(config, context, challenger, manifests)
        verdict = gate(settings, champion_metrics, challenger_metrics)
        decision = "promote" if verdict["promote"] else "not_promoted"
    console.log(f"[retrain] {verdict['reason']}")
    decision_run = _record(context, experiment_id, settings, ingested.version, champion, challenger, recipe,
                           champion_metrics, challenger_metrics, verdict, decision, attempt)
    result = {**base, "decision": decision, "promoted": verdict["promote"], "reason": verdict["reason"],
              "deltas": verdict["deltas"], "blocked_by": verdict["blocked_by"], "mlflow_run_id": decision_run,
              "challenger": {"run": challenger.name, "model": challenger.model_uri, "mlflow_run_id": challenger.run_id},
              "metrics": {"champion": _json_numbers(champion_metrics), "challenger": _json_numbers(challenger_metrics)}}
    if not verdict["promote"]:
        return result

    console.rule("[bold]retrain: promote")
    version = registry.register(context.tracking_uri, settings.name, challenger.model_uri, challenger.run_id, {
        registry.TAG_DATASET: ingested.dataset, registry.TAG_DATASET_VERSION: ingested.version,
        registry.TAG_DATASET_MANIFEST: new_uri, registry.TAG_RUN_KEY: challenger.paths.run_key,
        registry.TAG_RUN_NAME: challenger.name, registry.TAG_RECIPE: _recipe_json(recipe)})
    served = put_in_service(config, context, version)
    return {**result, "version": version.version, **served}


def _json_numbers(metrics: dict[str, float]) -> dict[str, float | None]:
    """Non-finite numbers as null: the --json line must stay strict JSON for scripts."""
    return {name: value if math.isfinite(value) else None for name, value in metrics.items()}


def _recipe_json(recipe: dict[str, Any]) -> str:
    return json.dumps(recipe, sort_keys=True)


def _record(context: StageContext, experiment_id: str, settings: RetrainConfig, dataset_version: str,
            champion: registry.ModelVersion | None, challenger: TrainedRun, recipe: dict[str, Any],
            champion_metrics: dict[str, float], challenger_metrics: dict[str, float], verdict: dict[str, Any],
            decision: str, attempt: str) -> str:
    """The decision as an MLflow run: both metric sets, the deltas, the decision and its reason."""
    tags = {registry.TAG_DECISION: decision, TAG_ATTEMPT: attempt, "reason": verdict["reason"][:5000],
            "dataset_version": dataset_version,
            registry.TAG_CHAMPION_VERSION: champion.version if champion else "none",
            registry.TAG_CHALLENGER_RUN: challenger.run_id, "stage": "retrain"}
    run_id = create_run(context.tracking_uri, experiment_id, f"retrain-{dataset_version}", tags)
    logger = RunLogger(context.tracking_uri, run_id)
    logger.log_params({"primary": settings.primary, "margin": settings.margin, "recipe_run": recipe["run"],
                       "guarded": json.dumps(settings.guarded, sort_keys=True)})
    logger.log_metrics({**{f"champion/{k}": v for k, v in champion_metrics.items()},
                        **{f"challenger/{k}": v for k, v in challenger_metrics.items()},
                        **{f"delta/{k}": v for k, v in verdict["deltas"].items()},
                        "promoted": float(verdict["promote"])})
    logger.log_dict({"decision": decision, **verdict, "champion": _json_numbers(champion_metrics),
                     "challenger": _json_numbers(challenger_metrics),
                     "challenger_model": challenger.model_uri, "recipe": recipe}, "retrain/decision.json")
    logger.terminate()
    return run_id


# --- promote / rollback --------------------------------------------------------------------

def run_promote(config: Config, context: StageContext | Console | None, version: int) -> dict[str, Any]:
    """Put model version `version` into service (no gate: an operator's decision)."""
    context = stage_context(config, context)
    check_settings(config)
    settings = config.retrain
    with held_lock(context, settings, "promote"):
        found = registry.get_version(context.tracking_uri, settings.name, version)
        if found is None:
            known = [v.version for v in registry.versions(context.tracking_uri, settings.name)]
            raise ConfigError(f"--version {version}: registered model {settings.name!r} has no such version; "
                              f"versions: {known or 'none (run chipmatch retrain first)'}")
        served = put_in_service(config, context, found)
    return {"stage": "promote", "name": settings.name, "version": version, **served}


def run_rollback(config: Config, context: StageContext | Console | None = None) -> dict[str, Any]:
    """The previous generation back in service: pointer first, then the aliases follow it
    (``champion`` = the model of the index now live, ``previous`` = that of the one before)."""
    context = stage_context(config, context)
    settings, store = config.retrain, context.store
    with held_lock(context, settings, "rollback"):
        current = read_pointer(store, settings.name)
        if current is None or not current.previous:
            raise MissingDataError(f"nothing to roll back for {settings.name!r}: "
                                   + ("no live index" if current is None else "the live index has no previous generation"))
        champion = registry.by_alias(context.tracking_uri, settings.name, registry.CHAMPION)
        target = _version_of_index(context, settings.name, current.previous[0].index)
        older = _version_of_index(context, settings.name, current.previous[1].index) if len(current.previous) > 1 else None
        kept_previous = registry.by_alias(context.tracking_uri, settings.name, registry.PREVIOUS)
        pointer = rollback_pointer(store, settings.name)
        try:
            registry.set_champion(context.tracking_uri, settings.name, target.version, older.version if older else None)
        except Exception:
            switch_live(store, settings.name, store.uri_of(current.live.index), keep_generations=settings.keep_generations,
                        prune=False)
            registry.set_previous(context.tracking_uri, settings.name, kept_previous.version if kept_previous else None)
            raise
    context.console.log(f"[rollback] {settings.name}@champion = v{target.version}; live index "
                        f"{store.uri_of(pointer.live.index)}")
    return {"stage": "rollback", "name": settings.name, "index": store.uri_of(pointer.live.index),
            "champion_version": target.version, "previous_version": older.version if older else None,
            "rolled_back_from": champion.version if champion else None, "sequence": pointer.sequence}


def _version_of_index(context: StageContext, name: str, folder: str) -> registry.ModelVersion:
    manifest = context.store.read_json(f"{folder}/{INDEX_MANIFEST_FILENAME}")
    run_id = manifest.get("model_run_id")
    found = registry.find_by_run(context.tracking_uri, name, run_id) if run_id else None
    if found is None:
        raise MissingDataError(f"index {context.store.uri_of(folder)} was built from run {run_id!r}, which is no version "
                               f"of {name!r}: roll back by promoting a version (chipmatch promote --version N)")
    return found


# --- output --------------------------------------------------------------------------------

def summary_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"retrain {result['name']}: {result['decision']}")
    table.add_column("metric")
    table.add_column("champion", justify="right")
    table.add_column("challenger", justify="right")
    table.add_column("delta", justify="right")
    metrics = result.get("metrics", {})
    champion, challenger = metrics.get("champion", {}), metrics.get("challenger", {})
    for name in sorted(set(champion) | set(challenger)):
        if name.startswith(NEW_PREFIX + SUPERCLASS_METRIC) or name.startswith(BENCHMARK_PREFIX + SUPERCLASS_METRIC):
            continue   # one row per superclass would drown the table; they are in the JSON and MLflow
        cells = [f"{side[name]:.4f}" if name in side else "-" for side in (champion, challenger)]
        delta = result.get("deltas", {}).get(name)
        table.add_row(name, *cells, f"{delta:+.4f}" if delta is not None else "")
    return table


__all__ = ["BUSY_EXIT_CODE", "FAULT_ENV", "FAULT_POINTS", "InjectedFault", "RetrainBusy", "run_promote", "run_retrain",
           "run_rollback", "summary_table"]
