"""The `chipmatch` command: one subcommand per stage, plus `run` for the whole pipeline.

Every stage takes `--config FILE` (default: conf/quickstart.yaml) and `key=value` overrides,
and with `--json` prints one JSON object as its last line of stdout (URIs written, counts,
metrics) for scripts and schedulers. Human output (progress, tables) goes to stderr; Ray's
own output goes to a log file (its path printed once) unless `--verbose`.

Exit codes: 0 done · 2 config error (a bad key or value, a path the config names that is not
there) · 3 data error (an input that does not fit, an earlier stage not run) · 4 resource error
(the cluster cannot provide what the config asks) · 5 (retrain, promote, rollback) another of them
holds the lock on the storage root and did not release it within retrain.lock_wait seconds ·
1 anything else: a bug, with its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from rich.markup import escape

from components.errors import ChipmatchError, ConfigError
from pipelines.config import Config, load_config
from pipelines.context import StageContext, make_console


def _ingest(config: Config, context: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.ingest import result_json, run_ingest, summary_table

    result = run_ingest(config, context)
    context.console.print(summary_table(result))
    return result_json(result)


def _train(config: Config, context: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.train import result_json, run_train, summary_table

    runs = run_train(config, context)
    context.console.print(summary_table(runs))
    return result_json(runs)


def _evaluate(config: Config, context: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.evaluate import result_json, run_evaluate, summary_table

    evaluated = run_evaluate(config, context)
    context.console.print(summary_table(evaluated, config.evaluate.taps))
    return result_json(evaluated)


def _compare(config: Config, context: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.compare import run_compare

    return run_compare(config, context, experiment=args.experiment, sort=args.sort, plots=args.plot or (),
                       pr_runs=args.pr_run or ())


def _tune(config: Config, context: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.tune import result_json, run_tune, summary_table

    result = run_tune(config, context)
    context.console.print(summary_table(result))
    return result_json(result)


def _index(config: Config, context: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.index import run_index

    return run_index(config, context)


def _search(config: Config, context: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    from components.index import SearchFilter
    from pipelines.search import run_search

    bbox = tuple(float(v) for v in args.bbox.split(",")) if args.bbox else None
    time_range = (args.time_from, args.time_to) if (args.time_from or args.time_to) else None
    search_filter = SearchFilter(labels=args.label or None, bbox=bbox, time_range=time_range, scene_ids=args.scene or None)
    index_uri = args.index
    if index_uri is None:   # the index in service for retrain.name (indexes/<name>/LIVE.json)
        from components.release import resolve_live

        index_uri = resolve_live(context.store, config.retrain.name)
        context.console.log(f"[search] live index of {config.retrain.name!r}: {index_uri}")
    result = run_search(index_uri, args.image, args.embedding, args.k, search_filter, args.grid, args.query_label,
                        context.console)
    return {**result, "live": args.index is None}


def _retrain(config: Config, context: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.retrain import run_retrain, summary_table

    result = run_retrain(config, context)
    if result["decision"] != "no_change":
        context.console.print(summary_table(result))
    return result


def _promote(config: Config, context: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.retrain import run_promote

    return run_promote(config, context, args.version)


def _rollback(config: Config, context: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.retrain import run_rollback

    return run_rollback(config, context)


def _serve(config: Config, context: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.serve import run_serve

    return run_serve(config, context, args)


def _run(config: Config, context: StageContext, args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.run import run_pipeline

    return run_pipeline(config, context)


STAGES: dict[str, tuple[Callable, str]] = {
    "ingest": (_ingest, "ingest a source, split it and shard it into a WebDataset version"),
    "train": (_train, "train an embedding per configured loss with Ray Train (tracked in MLflow)"),
    "evaluate": (_evaluate, "measure retrieval of every trained run on the unseen classes"),
    "compare": (_compare, "compare the runs of an MLflow experiment (loss, time, epochs, accuracy, mAP, R@1, MAP@R)"),
    "tune": (_tune, "sweep hyperparameters with Ray Tune + ASHA (tune=<conf/tune file>); writes the best config"),
    "index": (_index, "embed a dataset version and build a sharded FAISS index (conf/index/*.yaml)"),
    "search": (_search, "query an index with an image (or an embedding), with metadata filters"),
    "serve": (_serve, "serve searches of the live index over HTTP (Ray Serve), following switches of its pointer"),
    "run": (_run, "run the whole pipeline on a config"),
    "retrain": (_retrain, "ingest new imagery, fine-tune a challenger from the champion, promote it only if it passes "
                          "the gate (registry alias + live index switch)"),
    "promote": (_promote, "put registered model version N into service (index, live pointer, champion alias)"),
    "rollback": (_rollback, "put the previous live index and its model back into service"),
}


# Stages that write under storage.root (checked before any work starts).
WRITING_STAGES = ("ingest", "train", "tune", "evaluate", "index", "compare", "run", "retrain", "promote", "rollback")
# Stages that log to MLflow (their tracking store is resolved before any work starts).
TRACKING_STAGES = ("train", "tune", "evaluate", "compare", "run", "retrain", "promote", "rollback")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chipmatch", description="Fine-grained retrieval of overhead imagery on Ray.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for name, (_, help_text) in STAGES.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", help="YAML config (default: conf/quickstart.yaml)")
        sub.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
        sub.add_argument("--verbose", action="store_true", help="show Ray's own logs here instead of in a log file")
        sub.add_argument("overrides", nargs="*", metavar="key=value",
                         help="config overrides, e.g. data.source=folder data.root=DIR")
        if name == "search":
            sub.add_argument("--index", help="index folder URI (printed by `chipmatch index`); default: the live "
                                              "index of retrain.name (indexes/<name>/LIVE.json)")
            sub.add_argument("--image", help="query chip (PNG, JPEG, TIFF)")
            sub.add_argument("--embedding", help="query embedding (.npy) instead of an image")
            sub.add_argument("-k", type=int, default=10, help="results (default 10)")
            sub.add_argument("--grid", help="write a PNG: the query, then the results")
            sub.add_argument("--query-label", help="the query's class, if known (grid borders)")
            sub.add_argument("--label", action="append", help="only results of this class (repeatable)")
            sub.add_argument("--bbox", help="only results inside min_lon,min_lat,max_lon,max_lat")
            sub.add_argument("--time-from", help="only results at or after this time (ISO 8601)")
            sub.add_argument("--time-to", help="only results at or before this time (ISO 8601)")
            sub.add_argument("--scene", action="append", help="only results from this scene id (repeatable)")
        if name == "serve":
            from pipelines.serve import add_arguments as add_serve_arguments

            add_serve_arguments(sub)
        if name == "promote":
            sub.add_argument("--version", type=int, required=True, help="registered model version to put into service")
        if name == "compare":
            sub.add_argument("--experiment", help="MLflow experiment (default: tracking.experiment)")
            sub.add_argument("--sort", default="mAP", help="column to sort by (default: mAP)")
            sub.add_argument("--plot", action="append", choices=["convergence", "pr"],
                             help="also write figures under compare/: convergence (validation R@1 against epochs "
                                  "and training time), pr (PR curves of every row); repeatable")
            sub.add_argument("--pr-run", action="append", metavar="ROW",
                             help="draw only this row in the PR figure, beside the baselines (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:   # MLflow's per-download progress bars are its internals, not the stage's progress
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    console = make_console()
    try:
        config = load_config(args.config, args.overrides)
        context = StageContext(config, console, stage=args.command, verbose=args.verbose)
        if args.command in WRITING_STAGES:
            context.store.check_writable()
        if args.command in TRACKING_STAGES:
            _ = context.tracking_uri   # a remote root without tracking.uri fails here, before Ray starts
        handler, _ = STAGES[args.command]
        result = handler(config, context, args)
    except (ChipmatchError, FileNotFoundError) as exc:
        # A plain FileNotFoundError names a path the config or a flag gave: a config error.
        code = exc.exit_code if isinstance(exc, ChipmatchError) else ConfigError.exit_code
        console.print(f"[bold red]chipmatch {args.command}: error:[/] {escape(str(exc))}")
        if args.json:
            print(json.dumps({"stage": args.command, "error": str(exc), "exit_code": code}))
        return code
    except Exception as exc:
        if args.json:   # scripts still get their last line; the traceback follows on stderr
            print(json.dumps({"stage": args.command, "error": f"{type(exc).__name__}: {exc}", "exit_code": 1}))
        raise
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
