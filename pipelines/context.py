"""`StageContext`: what every stage shares, built once per command by the CLI.

A stage gets the config (what to do) and a context (where things are and how to talk to the
user): the storage store and its layout, the MLflow tracking URI and experiment, the dataset
version the stages work on, the console, and the Ray session with its log file. No stage
resolves any of these itself, so no stage imports another stage's helpers.

Library callers and tests may pass a `rich.console.Console` (or nothing) where a context is
expected; `stage_context` then builds one from the config, leaving Ray's output on the terminal.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from functools import cached_property

from rich.console import Console

from components.data.versions import latest_version, open_version
from components.errors import MissingDataError
from components.storage import Layout, Store
from components.tracking import default_tracking_uri, open_experiment
from pipelines.config import Config, RayConfig

# Width of tables and log lines when the output is not a terminal (a file, a CI log): rich's
# default there is 80 columns, which cuts run names (`warp_fr…`).
FILE_WIDTH = 200


def make_console(stderr: bool = True) -> Console:
    """The console stages print to: the terminal's width on a terminal, FILE_WIDTH otherwise."""
    stream = sys.stderr if stderr else sys.stdout
    # log_path=False: no "file.py:123" column at the right edge of every progress line.
    return Console(stderr=stderr, width=None if stream.isatty() else FILE_WIDTH, log_path=False)


def tracking_uri(config: Config) -> str:
    """`tracking.uri`, else an sqlite store next to the outputs."""
    return config.tracking.uri or default_tracking_uri(config.storage.root)


class StageContext:
    """Storage, layout, tracking, dataset, console and Ray of one command (see the module docstring)."""

    def __init__(self, config: Config, console: Console, stage: str = "chipmatch", verbose: bool = True):
        self.console = console
        self.store = Store(config.storage.root)
        self.layout = Layout()
        self.experiment = config.tracking.experiment
        self.stage = stage
        self.verbose = verbose            # False: Ray's own output goes to `log_file`
        self._config = config             # for what is resolved lazily (tracking store, dataset)
        self._dataset: str | None = config.train.dataset
        self._ray_ready = False

    # -- tracking ---------------------------------------------------------------------------
    @cached_property
    def tracking_uri(self) -> str:
        return tracking_uri(self._config)

    @cached_property
    def experiment_id(self) -> str:
        """The MLflow experiment, created (with the store) by this process before any worker uses it."""
        return open_experiment(self.tracking_uri, self.experiment, self.store.uri_of(self.layout.mlflow_artifacts()))

    # -- the dataset version ----------------------------------------------------------------
    @property
    def dataset(self) -> str:
        """The manifest URI the stages work on: `train.dataset`, the version this command
        ingested, else the latest ingested version of the config's source."""
        if self._dataset is None:
            self._dataset = self._latest_dataset()
        return self._dataset

    @dataset.setter
    def dataset(self, manifest_uri: str) -> None:
        self._dataset = manifest_uri

    def _latest_dataset(self) -> str:
        from components.data.sources import build_source

        name = build_source(self._config.data).dataset_name()
        version = latest_version(self.store, name)
        if version is None:
            raise MissingDataError(f"no ingested dataset {name!r} under {self.store.uri}: run `chipmatch ingest` first "
                                   "(or set train.dataset to a manifest URI)")
        return open_version(self.store.uri_of(self.layout.manifest(name, version))).uri

    # -- Ray --------------------------------------------------------------------------------
    @cached_property
    def log_file(self) -> str:
        """Where Ray's own output goes unless verbose: under the storage root when it is local."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        relative = self.layout.log(self.stage, f"{stamp}-{os.getpid()}")
        if "://" in self.store.uri and not self.store.uri.startswith("file://"):
            return os.path.join(tempfile.gettempdir(), "chipmatch-" + relative.replace("/", "-"))
        path = self.store.path(relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def ensure_ray(self, config: RayConfig | None = None) -> None:
        """Start or join Ray (once); unless verbose, send its output to `log_file` and say so once."""
        from pipelines.ray_session import ensure_ray

        if self._ray_ready:
            return
        ensure_ray(config or self._config.ray, None if self.verbose else self.log_file)
        if not self.verbose:
            self.console.log(f"Ray's own logs: {self.log_file} (--verbose shows them here)")
        self._ray_ready = True


def stage_context(config: Config, context: StageContext | Console | None) -> StageContext:
    """`context` itself, or a context for `config` around a console (library and test callers)."""
    if isinstance(context, StageContext):
        return context
    return StageContext(config, context if context is not None else make_console())
