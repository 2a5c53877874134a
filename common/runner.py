"""Starting stages: one stage, or several in one Spark application.

With ``availableNow``/``once`` the stages run one after the other (bronze drains Kafka, then
silver drains bronze, ...), so a single command takes everything to gold. With
``processingTime`` they run side by side until stopped (SIGINT/SIGTERM) or until one fails.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time

from common import checkpoints, streams
from common.errors import LakehouseError
from common.pipeline import STAGES, resolve_stages
from common.settings import Settings, get_settings

__all__ = ["STAGES", "resolve_stages", "run", "main_for_stage", "reset"]
log = logging.getLogger("lakehouse.runner")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # its failures surface as our one-line errors


def _starter(stage: str):
    return importlib.import_module(f"{stage}.job").start


def _start_stage(spark, settings: Settings, stage: str, options: streams.StreamOptions) -> list:
    """Start one stage's queries; each start line says how long the stage's set-up took."""
    t0 = time.monotonic()
    queries = _starter(stage)(spark, settings, options)
    for q in queries:
        print(f"  started {q.name:<34} id={q.id} runId={q.runId} ({time.monotonic() - t0:.1f} s)",
              file=sys.stderr, flush=True)
    return queries


def run(stages: tuple[str, ...], settings: Settings, trigger: str | None = None, sink: str | None = None,
        spark=None) -> None:
    options = streams.StreamOptions.from_args(settings, trigger, sink)
    from common.stack import check_reachable

    check_reachable(settings)
    if spark is None:
        from common.spark import get_spark

        spark = get_spark(settings, app_name="lakehouse-" + "-".join(stages))
    from common.catalog import register_tables

    streams.install_progress_logger(spark, settings)
    one_shot = options.trigger.kind in ("availableNow", "once")
    started: list = []
    try:
        for stage in stages:
            queries = _start_stage(spark, settings, stage, options)
            started += queries
            if one_shot:
                streams.await_all(spark, queries)
                register_tables(spark, settings)
        if not one_shot:
            streams.await_all(spark, started)
    finally:
        # every query this run started, also those of a stage that failed half-way through starting
        for q in started + list(spark.streams.active):
            if q.isActive:
                q.stop()
        checkpoints.leases(spark).release_all()


def reset(spark, settings: Settings, stage: str, dry_run: bool = False) -> list[str]:
    """Delete the tables and checkpoints of ``stage`` and of every later stage, so the next run
    rebuilds them from the layer below. Refuses while any affected query runs (checkpoint leases).
    Bronze (the only copy of what Kafka may no longer hold) is reset only when asked by name.
    Returns the paths deleted (or that would be, with ``dry_run``)."""
    from common import pipeline
    from common.errors import CheckpointError

    flows = pipeline.downstream(settings, stage)
    for f in flows:
        owner = checkpoints.live_owner(spark, f.checkpoint)
        if owner:
            raise CheckpointError(f"query {f.name} is running (application {owner.get('app_id')}, pid "
                                  f"{owner.get('pid')} on {owner.get('host')}); stop it before `lakehouse reset`")
    paths: list[str] = []
    for f in flows:
        for p in pipeline.sink_paths(settings, f).values():
            if p not in paths:
                paths.append(p)
        paths.append(f.checkpoint)
    if not dry_run:
        for p in paths:
            checkpoints.delete_tree(spark, p)
    return paths


def stage_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog)
    add_run_options(p)
    return p


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trigger", help="processingTime=<interval> (default from LAKEHOUSE_TRIGGER), "
                                     "availableNow, once (older form of availableNow), continuous=<interval>")
    p.add_argument("--sink", choices=streams.SINKS, help="delta (default) or console for debugging")


def main_for_stage(stage: str, argv: list[str] | None = None) -> int:
    """Entry point of ``spark-submit <stage>/job.py``."""
    args = stage_parser(f"{stage}/job.py").parse_args(argv)
    setup_logging()
    try:
        run(resolve_stages(stage), get_settings(), args.trigger, args.sink)
    except LakehouseError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0
