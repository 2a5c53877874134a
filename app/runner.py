"""Starting stages: one stage, or several in one Spark application.

With ``availableNow``/``once`` the stages run one after the other (bronze drains Kafka, then
silver drains bronze, ...), so a single command takes everything to gold. With
``processingTime`` they run side by side until stopped (SIGINT/SIGTERM) or until one fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
import time
import traceback

from app import dataflow
from common import checkpoints, streams, tables
from common.errors import LakehouseError
from common.ownership import Ownership, refuse_if_running
from common.pipeline import STAGES, resolve_stages
from common.run import RunContext
from common.settings import Settings, get_settings

__all__ = ["STAGES", "resolve_stages", "run", "main_for_stage", "reset"]
log = logging.getLogger("lakehouse.runner")


# Third-party Python loggers whose warnings carry nothing for the user (LAKEHOUSE_LOG_LEVEL=DEBUG
# or --verbose shows them): kafka-python's failures surface as our one-line errors, Great
# Expectations logs hundreds of lines per run about its own internals, and
# pyspark's query-context loggers print each failed query's whole Java stack as a JSON line, before
# the one-line error the command prints anyway.
_QUIET_LOGGERS = ("kafka", "great_expectations", "urllib3", "SQLQueryContextLogger", "DataFrameQueryContextLogger")


# kafka-python logs each client's whole configuration at DEBUG (--verbose), its SASL password too
_PASSWORD = re.compile(r"""(password['"]?\s*[:=]\s*)(['"])[^'"]*\2""", re.I)


class _NoPasswords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "password" in message.lower():
            record.msg, record.args = _PASSWORD.sub(r"\1\2****\2", message), None
        return True


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _NoPasswords) for f in handler.filters):
            handler.addFilter(_NoPasswords())
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.CRITICAL)
    # py4j logs a foreachBatch function's exception with its whole traceback ("an exception while
    # executing the Python Proxy") before Spark fails the query, which the runner reports in one line
    logging.getLogger("py4j").setLevel(logging.INFO if verbose else logging.CRITICAL)


def verbose_requested(flag: bool) -> bool:
    """``--verbose``, or LAKEHOUSE_LOG_LEVEL=DEBUG; ``--verbose`` sets that setting for the process."""
    if flag:
        os.environ["LAKEHOUSE_LOG_LEVEL"] = "DEBUG"
        return True
    try:
        return get_settings().log_level == "DEBUG"
    except LakehouseError:  # the command itself reports the bad setting, in one line
        return False


def guarded(command, verbose: bool) -> int:
    """Run ``command()`` as an entry point: a user error is one line and its exit code; any other
    failure is one line too (its root cause), the full trace only with --verbose."""
    try:
        return command()
    except LakehouseError as e:
        if verbose:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): as quiet as any Unix tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except Exception as e:  # noqa: BLE001 - the entry point's last word
        if verbose:
            traceback.print_exc()
        print(f"error: {streams.short_error(e)} (--verbose shows the full trace)", file=sys.stderr)
        return 1


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A stage's queries a standby built before it owned the stage (``prepare``), with what they
    were built from that the active driver's work can change (``_built_from``)."""

    specs: list
    built_from: tuple


def _built_from(run: RunContext, flows) -> tuple:
    """Each checkpoint's query id (a checkpoint replaced while the standby waited: built again).
    Not the source tables' schemas: reading them at the takeover cost silver's start 4-5 s (three
    busy bronze logs brought up to date); a query planned before a schema change fails its first
    batch before writing anything, and is started again with the new schema
    (``streams.schema_changed``), as a running query is."""
    from common.checkpoints import query_id

    return tuple(query_id(run.spark, f.checkpoint) for f in flows)


def _still_valid(run: RunContext, flows, prepared: Prepared) -> bool:
    try:
        return (_built_from(run, flows) == prepared.built_from
                and not any(spec.stale is not None and spec.stale() for spec in prepared.specs))
    except Exception as e:  # noqa: BLE001 - not known to be valid: built again
        log.warning("standby: could not check the queries built while standing by (%s)", streams.short_error(e))
        return False


def _start_stage(run: RunContext, stage: str, prepared: Prepared | None = None) -> list:
    """Start one stage's queries, ``prepared`` (``prepare``) unless what they were built from has
    changed since; each start line says how long the stage's set-up took."""
    t0 = time.monotonic()
    flows = dataflow.flows(run.settings, stage)
    if prepared is not None and not _still_valid(run, flows, prepared):
        log.info("standby: %s's queries built again: what they were built from changed while standing by", stage)
        prepared = None
    specs = prepared.specs if prepared is not None else flows[0].build(run, flows)  # the stage's function
    run.follow(flows, stage)
    queries = streams.start_all(run, specs)
    built = ", built while standing by" if prepared is not None else ""
    for q in queries:
        print(f"  started {q.name:<34} id={q.id} runId={q.runId} ({time.monotonic() - t0:.1f} s{built})",
              file=sys.stderr, flush=True)
    return queries


def prepare(run: RunContext, stages) -> dict[str, Prepared]:
    """A standby's stages' queries built before it owns them, so that the takeover only starts them
    (building them took 2-7 s of it, on cores the catch-up needs). Nothing is written. Built at the
    takeover instead: a stage whose tables are not ready (``tables.NotReady``: the takeover creates
    or alters them), those that read its tables, a stage whose checkpoint is new (both drivers
    started together: its start offsets come from the tables then), and any stage the preparation
    fails for; at the takeover, one whose checkpoint was replaced since (``_still_valid``)."""
    from common.checkpoints import is_new

    out: dict[str, Prepared] = {}
    unready: set[str] = set()  # the tables of the stages left to the takeover
    run.preparing = True
    try:
        for stage in stages:
            flows = dataflow.flows(run.settings, stage)
            try:
                if any(str(src) in unready for f in flows for src in f.sources):
                    raise tables.NotReady("it reads tables the takeover may change first")
                if any(is_new(run.spark, f.checkpoint) for f in flows):
                    raise tables.NotReady("a new checkpoint")
                built_from = _built_from(run, flows)
                out[stage] = Prepared(flows[0].build(run, flows), built_from)
            except Exception as e:  # noqa: BLE001 - an optimisation: the takeover builds it
                unready.update(str(t) for f in flows for t in f.tables)
                (log.info if isinstance(e, tables.NotReady) else log.warning)(
                    "standby: %s is built at the takeover (%s)", stage, streams.short_error(e))
    finally:
        run.preparing = False
    return out


def _inputs_exist(run: RunContext, stages) -> bool:
    """Every Delta table the stages read exists (not a new lake, where each stage creates the tables
    the next one reads)."""
    from common.fs import Fs
    from common.pipeline import Table

    fs = Fs(run.spark)
    return all(fs.has_children(f"{src.path(run.settings)}/_delta_log")
               for stage in stages for f in dataflow.flows(run.settings, stage) for src in f.sources
               if isinstance(src, Table))


def _start_side_by_side(run: RunContext, stages, prepared: dict) -> dict:
    """Start each stage's queries in a thread of its own (their set-up is mostly waiting on the
    object store): stage -> queries. The first failure is raised once all have ended."""
    from common.batches import run_parallel

    out: dict = {}
    run_parallel([lambda stage=stage: out.__setitem__(stage, _start_stage(run, stage, prepared.get(stage)))
                  for stage in stages])
    return out


def run(stages: tuple[str, ...], settings: Settings, trigger: str | None = None, sink: str | None = None,
        spark=None, standby: bool = False, publish: bool = True) -> None:
    """Run ``stages`` until their queries end (a one-shot trigger) or the process is stopped. The run
    owns its stages (``common.ownership``): a second copy is refused before its JVM starts, unless
    ``standby``: then it starts its JVM, warms it up on scratch data and waits, taking every stage
    over the moment their owner stops (at once on this host, after LAKEHOUSE_OWNERSHIP_EXPIRY
    otherwise). ``publish=False``: gold_orders sends nothing to Kafka (a scratch run's)."""
    if spark is None:  # a process of its own: it holds the S3 keys of the stages it runs, no other
        settings = settings.acting_as(*stages)
    options = dataclasses.replace(streams.StreamOptions.from_args(settings, trigger, sink), publish=publish)
    from common.clients import check_reachable

    # a missing topic is one line before a JVM starts (12-18 s here), not after
    topics = [t for stage in stages for f in dataflow.flows(settings, stage) for t in f.topics_read]
    # Kafka is checked with the first of its roles the stages hold, by ensure_topics_exist when there are topics
    check_reachable(settings, kafka=None if topics else next((r for r in ("bronze", "gold") if r in stages), None))
    if topics:
        streams.ensure_topics_exist(settings, topics, role="bronze")
    # (the tables are not registered by name here: a caller that queries them so, the demo, does it)
    owner = Ownership(settings, stages, app="lakehouse-" + "-".join(stages)) if options.sink == "delta" else None
    if owner is not None and not standby:
        owner.acquire()  # a second copy is refused in a second, before its JVM starts
    if standby and owner is not None:
        from app import standby as warm

        priority = warm.lower_priority()
    ctx: RunContext | None = None
    prepared: dict = {}
    try:
        if spark is None:
            from common.spark import get_spark

            spark = get_spark(settings, app_name="lakehouse-" + "-".join(stages))
        if owner is not None:
            owner.app_id = spark.sparkContext.applicationId
        if standby and owner is not None:
            def ready() -> None:  # warm: the run's context, and its queries built, before waiting
                nonlocal ctx, prepared
                ctx = RunContext.open(spark, settings, options, owner)
                prepared = prepare(ctx, stages)

            warm.stand_by(spark, settings, stages, owner, priority, ready=ready)
        if ctx is None:
            ctx = RunContext.open(spark, settings, options, owner)
    except BaseException:
        if ctx is not None:
            ctx.close()  # (gives the stages back)
        elif owner is not None:
            owner.release()
        raise
    one_shot = options.trigger.kind in ("availableNow", "once")
    started: list = []
    stage_of: dict = {}  # query -> its stage

    def restart(failed) -> dict:
        """Start ``failed``'s stage again (its other queries stopped first): old query -> new."""
        stage = stage_of[failed]
        old = [q for q, s in stage_of.items() if s == stage and q in live]
        for q in old:
            streams.stop_quietly(q)
        new = _start_stage(ctx, stage)
        by_name = {q.name: q for q in new}
        for q in new:
            stage_of[q] = stage
        started.extend(new)
        live.difference_update(old)
        live.update(new)
        return {q: by_name[q.name] for q in old if q.name in by_name}

    live: set = set()
    try:
        if not one_shot and len(stages) > 1 and _inputs_exist(ctx, stages):
            by_stage = _start_side_by_side(ctx, stages, prepared)  # a restart or a takeover: no stage waits
        else:
            by_stage = {}
        for stage in stages:
            queries = by_stage.get(stage) or _start_stage(ctx, stage, prepared.get(stage))
            started += queries
            stage_of.update({q: stage for q in queries})
            live.update(queries)
            if one_shot:
                streams.await_all(spark, queries, restart=restart, check=owner and owner.check)
        if not one_shot:
            streams.await_all(spark, list(started), restart=restart, check=owner and owner.check)
    finally:
        # every query this run started, also those of a stage that failed half-way through starting
        for q in started + list(spark.streams.active):
            streams.stop_quietly(q)
        ctx.close(started)


def reset(spark, settings: Settings, stage: str, dry_run: bool = False) -> list[str]:
    """Delete the tables and checkpoints of ``stage`` and of every later stage, so the next run
    rebuilds them from the layer below. Refuses while any affected stage runs (its ownership).
    Bronze (the only copy of what Kafka may no longer hold) is reset only when asked by name.
    Returns the paths deleted (or that would be, with ``dry_run``)."""
    flows = dataflow.downstream(settings, stage)
    refuse_if_running(settings, flows, "reset")
    paths: list[str] = []
    for f in flows:
        for p in f.sink_paths(settings).values():
            if p not in paths:
                paths.append(p)
        paths.append(f.checkpoint)
    if not dry_run:
        for p in paths:
            checkpoints.delete_tree(spark, p)
    return paths


@dataclasses.dataclass(frozen=True)
class RefreshPlan:
    """What ``lakehouse refresh`` empties and re-runs: the affected queries, each Delta table they
    write with its current version (the roll-back point), their checkpoints, the Kafka topics the
    rebuild publishes to again."""

    flows: tuple
    versions: dict[str, tuple[str, int]]   # layer.table -> (path, version before the refresh)
    settings: Settings

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.stage for f in self.flows))

    @property
    def checkpoints(self) -> tuple[str, ...]:
        return tuple(f.checkpoint for f in self.flows)

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(t for f in self.flows for t in f.topics_written)


def plan_refresh(spark, settings: Settings, target: str, include_bronze: bool = False) -> RefreshPlan:
    """The queries a refresh of ``target`` (a stage, or a ``layer.table``: the query writing it) redoes,
    with every later stage. Refuses bronze unless ``include_bronze`` and Kafka still holds every
    record bronze holds."""
    from common.errors import SettingsError

    if target in STAGES:
        stage, writer = target, None
    else:
        writer = next((f for f in dataflow.graph(settings) if target in map(str, f.tables)), None)
        if writer is None:
            names = sorted(str(t) for f in dataflow.graph(settings) for t in f.tables)
            raise SettingsError(f"{target!r} is neither a stage ({', '.join(STAGES)}) nor a table of the pipeline "
                                f"({', '.join(names)})")
        stage = writer.stage
    if stage == "bronze":
        if not include_bronze:
            raise SettingsError("bronze is the only copy of what Kafka may no longer hold: refreshing it re-reads "
                                "the topics from their start; add --include-bronze to do so")
        if settings.starting_offsets != "earliest":
            raise SettingsError(f"LAKEHOUSE_STARTING_OFFSETS={settings.starting_offsets!r}: a refreshed bronze would "
                                "not re-read the topics from their start; set it to earliest for the refresh")
        _check_kafka_holds_bronze(spark, settings)
    flows = tuple(f for f in dataflow.downstream(settings, stage)
                  if writer is None or f.stage != stage or f.name == writer.name)
    refuse_if_running(settings, flows, "refresh")
    versions = {}
    for f in flows:
        for name, path in f.sink_paths(settings).items():
            if tables.is_delta_table(spark, path):
                versions[name] = (path, int(spark.sql(f"DESCRIBE HISTORY delta.`{path}` LIMIT 1").collect()[0].version))
    return RefreshPlan(flows, versions, settings)


def _check_kafka_holds_bronze(spark, settings: Settings) -> None:
    """Every record bronze holds is still in Kafka (the earliest offset kept <= bronze's first one)."""
    from common.errors import SettingsError
    from kafka import TopicPartition

    from common.clients import kafka_consumer

    consumer = kafka_consumer(settings, "lakehouse-refresh")
    try:
        for topic in settings.source_topics:
            path = settings.table_path("bronze", settings.bronze_table_for(topic))
            if not tables.is_delta_table(spark, path):
                continue
            first = {r.partition: r.first for r in spark.sql(
                f"SELECT partition, min(offset) AS first FROM delta.`{path}` GROUP BY partition").collect()}
            tps = [TopicPartition(topic, p) for p in first]
            for tp, earliest in consumer.beginning_offsets(tps).items():
                if earliest > first[tp.partition]:
                    raise SettingsError(
                        f"Kafka no longer holds {topic}[{tp.partition}] offsets {first[tp.partition]}-{earliest - 1} "
                        "(retention): refreshing bronze would lose them; refresh silver instead")
    finally:
        consumer.close()


def refresh(spark, plan: RefreshPlan, stamp: str) -> list[str]:
    """Move each checkpoint of ``plan`` aside to ``<checkpoint>.before-refresh-<stamp>``, then empty
    every table (a Delta DELETE: the old version stays readable by time travel until VACUUM).
    Checkpoints first: should a DELETE fail, the next run finds a new checkpoint over a table with
    rows and refuses (``check_not_orphaned``) instead of resuming over emptied tables. Returns the
    moved checkpoints."""
    from common.errors import CheckpointError

    refuse_if_running(plan.settings, plan.flows, "refresh")  # again: a query may have started meanwhile
    moved = []
    for cp in plan.checkpoints:
        aside = f"{cp}.before-refresh-{stamp}"
        try:
            if checkpoints.move_tree(spark, cp, aside):
                moved.append(aside)
        except Exception as e:
            raise CheckpointError(f"could not move checkpoint {cp} to {aside} ({str(e).splitlines()[0]}); "
                                  "no table was emptied") from None
    from common.batches import run_parallel

    # one DELETE per table, side by side: each its own transaction on its own table (a failed one
    # leaves a table with rows under a moved checkpoint, which the next run refuses, as above)
    run_parallel([lambda path=path: spark.sql(f"DELETE FROM delta.`{path}`") for path, _ in plan.versions.values()])
    return moved


def stage_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run a stage (or all) of the pipeline as streaming queries.")
    p.add_argument("stage", choices=(*STAGES, "all"))
    add_run_options(p)
    p.add_argument("-v", "--verbose", action="store_true", help="every log line and full stack traces")
    return p


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trigger", help="processingTime=<interval> (default from LAKEHOUSE_TRIGGER), "
                                     "availableNow, once (older form of availableNow), continuous=<interval>")
    p.add_argument("--sink", choices=streams.SINKS, help="delta (default) or console for debugging")
    p.add_argument("--standby", action="store_true",
                   help="start warm and wait: take the stages over the moment their running copy stops "
                        "(at once on this host, after LAKEHOUSE_OWNERSHIP_EXPIRY otherwise)")


def main_for_stage(argv: list[str] | None = None) -> int:
    """Entry point of ``spark-submit app/submit.py <stage>``."""
    args = stage_parser("spark-submit app/submit.py").parse_args(argv)
    verbose = verbose_requested(args.verbose)
    setup_logging(verbose)

    def command() -> int:
        run(resolve_stages(args.stage), get_settings(), args.trigger, args.sink, standby=args.standby)
        return 0
    return guarded(command, verbose)
