"""``lakehouse`` - the project's one command-line entry point.

    lakehouse setup [jars|minio|all|tests|jvm]  fetch the pinned jars, build MinIO (tests: Chromium and
                                             actionlint; jvm: the class archive that speeds every start)
    lakehouse stack up|down|status           the local Kafka + MinIO stack
    lakehouse config                         effective settings, secrets redacted
    lakehouse produce [--topic T] ...        generate events into Kafka (+ ledger)
    lakehouse run bronze|silver|gold|all     run stages (streaming)
    lakehouse refresh <stage|table>          empty a stage (and what follows) and rebuild it
    lakehouse replay bronze --from-time T    re-read Kafka into bronze, only what it lacks
    lakehouse sql "SELECT ..."               Spark SQL over bronze.*, silver.*, gold.*
    lakehouse peek <topic>                   batch read of a Kafka topic
    lakehouse trace order <id> | kafka <topic> <partition> <offset>   one record's path through the lake
    lakehouse customers load [--file F]      load the customer dimension
    lakehouse status                         streaming queries: last batch, rates, lag (ops.pipeline_events)
    lakehouse dashboard [--port 8501]        web page of gold and pipeline health, refreshing itself
    lakehouse dq [--layer L]                 data-quality suites (Great Expectations)
    lakehouse sql-server [--port 10000]      Thrift JDBC server (beeline, BI tools)
    lakehouse spark-sql [-e "SELECT ..."]    Spark's spark-sql shell over the same tables
    lakehouse demo                           the README demo
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from common.errors import SettingsError
from common.settings import LAYERS, OPS, get_settings
from common.pipeline import STAGES


def _cmd_setup(args) -> int:
    from common import jars
    from common.spark import write_spark_defaults
    from devstack.stack import Stack

    if args.what in ("jars", "all"):
        for name in jars.JAR_SETS:
            print(f"{name} jars: {len(jars.fetch(name))} in {jars.jar_dir(name)}")
        print(f"spark defaults: {write_spark_defaults()}")
    if args.what in ("minio", "all"):
        print(f"minio: {Stack(get_settings()).build_minio()}")
    if args.what == "kafka":  # on a broker of your own (stack up does it for the local one): its admin
        stack = Stack(get_settings())
        stack.ensure_kafka_identities()
        stack.ensure_topics()
        print(f"kafka: {stack.s.kafka_identities}; topics {', '.join((*stack.s.source_topics, stack.s.topic_enriched))}")
    if args.what == "s3":  # on a MinIO of your own (stack up does it for the local one): its root key
        stack = Stack(get_settings())
        stack.ensure_buckets()
        print(f"buckets: {', '.join(stack.s.buckets)}")
        print("users and policies: " + (", ".join(stack.ensure_s3_identities()) or
                                        "none (every role uses LAKEHOUSE_S3_ACCESS_KEY)"))
    if args.what == "jvm":  # runs the pipeline on the local stack, so not part of `all`
        from app.jvm import build_class_archive

        path, took = build_class_archive(get_settings(), force=args.force)
        print(f"jvm class archive: {path}" + (f" (written in {took:.0f} s)" if took is not None else " (up to date)"))
    if args.what in ("browser", "tests"):  # for the tests (make test), not part of `all`
        from devstack.browser import ensure_browser

        chromium, driver = ensure_browser()
        print(f"browser: {chromium}, {driver}")
    if args.what == "tests":
        from devstack import gotools

        print(f"actionlint: {gotools.ensure('actionlint')}")
    return 0


def _cmd_stack(args) -> int:
    from devstack.stack import Stack

    stack = Stack(get_settings())
    if args.action == "kafka":  # the broker in the foreground: a container's main process
        stack.serve_kafka()
        return 0
    if args.action == "up":
        statuses = stack.up()
    elif args.action == "down":
        stopped = stack.down()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        statuses = stack.status()
    else:
        statuses = stack.status()
    print(f"{'SERVICE':<7} {'ADDRESS':<22} {'PID':<12} {'STATE':<18} DETAIL")
    for s in statuses:
        print(s.line())
    if args.action == "up":
        return 0 if all(s.healthy for s in statuses) else 1
    return 0


def _cmd_config(args) -> int:
    settings = get_settings()
    for k, v in settings.redacted().items():
        print(f"{k}={v}")
    print(f"# Kafka clients: {settings.kafka_identities}")
    print(f"# S3: {settings.s3_identities}")
    return 0


def _cmd_produce(args) -> int:
    from devstack.generator import GenOptions, produce

    settings = get_settings()
    topics = settings.source_topics if args.topic in (None, "all") else (args.topic,)
    start = None
    if args.start_time:
        start = datetime.fromisoformat(args.start_time)
        start = start if start.tzinfo else start.replace(tzinfo=timezone.utc)
    opts = GenOptions(
        topics=tuple(topics), count=args.count if args.count is not None else (100 if args.duration is None else None),
        duration=args.duration, rate=args.rate, seed=args.seed, customers=args.customers,
        duplicate_pct=args.duplicate_pct, late_pct=args.late_pct, late_by=args.late_by,
        malformed_pct=args.malformed_pct, start_time=start, event_spacing=args.event_spacing,
        extra_fields=_extra_fields(args.extra_field),
        ledger=Path(args.ledger) if args.ledger else Path(settings.stack_dir) / "ledger.jsonl",
        progress=not args.quiet)
    produce(settings, opts)
    return 0


def _extra_fields(items: list[str]) -> dict:
    """``--extra-field PATH=VALUE`` (VALUE as JSON if it parses, else a string)."""
    import json

    out = {}
    for item in items or ():
        path, sep, value = item.partition("=")
        if not sep or not path:
            raise SettingsError(f"--extra-field {item!r}: use PATH=VALUE, e.g. channel=web or metrics.gpu_percent=9.5")
        try:
            out[path] = json.loads(value)
        except ValueError:
            out[path] = value
    return out


def _cmd_run(args) -> int:
    from app.runner import resolve_stages, run

    run(resolve_stages(args.stage), get_settings(), args.trigger, args.sink, standby=args.standby)
    return 0


def _cmd_plan(args) -> int:
    from app.dataflow import describe

    print("\n".join(describe(get_settings())))
    return 0


def _cmd_reset(args) -> int:
    from app.runner import reset

    settings, spark = _lake_session("lakehouse-reset")
    paths = reset(spark, settings, args.stage, dry_run=True)
    print(f"reset {args.stage}: deletes these tables and checkpoints (bronze is never touched unless named):")
    print("\n".join(f"  {p}" for p in paths))
    if not _confirm("delete them?", args.yes, "reset"):
        print("nothing deleted")
        return 1
    reset(spark, settings, args.stage)
    print(f"deleted; the next `lakehouse run {args.stage}` (and later stages) rebuilds them from the layer below")
    return 0


def _confirm(question: str, yes: bool, what: str) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise SettingsError(f"{what} needs confirmation: run it in a terminal or add --yes")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def _cmd_refresh(args) -> int:
    from app.runner import plan_refresh, refresh, run

    settings, spark = _lake_session("lakehouse-refresh", kafka="reader")  # bronze's retention check, gold's topic
    plan = plan_refresh(spark, settings, args.target, args.include_bronze)
    print(f"refresh {args.target}: queries {', '.join(f.name for f in plan.flows)} start again from the layer below")
    for name, (path, version) in plan.versions.items():
        print(f"  empty {name} (at version {version}; that version stays readable by time travel until VACUUM)")
    for cp in plan.checkpoints:
        print(f"  move checkpoint {cp} aside")
    for topic in plan.topics:
        print(f"  the rebuild publishes to Kafka topic {topic} again: its consumers see those messages twice")
    if not _confirm("refresh?", args.yes, "refresh"):
        print("nothing changed")
        return 1
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    moved = refresh(spark, plan, stamp)
    print(f"emptied {len(plan.versions)} tables, moved {len(moved)} checkpoints to *.before-refresh-{stamp}")
    print("to roll back: stop the pipeline, `lakehouse sql 'RESTORE TABLE delta.`<path>` TO VERSION AS OF <version>'` "
          f"for each table above, move its checkpoint back from <checkpoint>.before-refresh-{stamp}; a stream reading a "
          "restored table (gold from silver) cannot resume across the restore: refresh that stage after")
    if args.no_run:
        print(f"the next `lakehouse run` of {', '.join(plan.stages)} rebuilds them")
        return 0
    t0 = datetime.now(timezone.utc)
    run(plan.stages, settings, "availableNow", spark=spark)
    print(f"rebuilt {', '.join(plan.stages)} in {(datetime.now(timezone.utc) - t0).total_seconds():.0f}s")
    return 0


def _cmd_replay(args) -> int:
    from app.dataflow import flow
    from bronze.job import replay

    start_ms = offsets = None
    if args.from_time is not None:
        try:  # (Python 3.10's fromisoformat does not take "Z")
            t = datetime.fromisoformat(args.from_time.replace("Z", "+00:00"))
        except ValueError:
            raise SettingsError(f"--from-time {args.from_time!r} is not an ISO 8601 time (e.g. 2026-11-26T10:00:00)") from None
        start_ms = int((t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp() * 1000)
    else:
        example = '{"commandes-json": {"0": 120, "1": 98, "2": 101}}'
        try:
            offsets = json.loads(args.from_offsets)
        except ValueError:
            offsets = None
        if not isinstance(offsets, dict) or not all(
                isinstance(v, dict) and all(str(p).isdigit() and isinstance(o, int) and o >= 0 for p, o in v.items())
                for v in offsets.values()):
            raise SettingsError(f"--from-offsets must be JSON like {example} (partitions left out: not replayed)")
        unknown = sorted(set(offsets) - set(get_settings().source_topics))
        if unknown:
            raise SettingsError(f"--from-offsets names {unknown[0]!r}, not a source topic; valid: "
                                + ", ".join(get_settings().source_topics))
    settings, spark = _lake_session("lakehouse-replay", kafka="bronze")
    added_any = False
    for topic, (read, added, left) in replay(spark, settings, flow(settings, "bronze"), start_ms, offsets,
                                             dry_run=args.dry_run).items():
        verb = "would append" if args.dry_run else "appended"
        print(f"{topic}: {read} records in Kafka from that point; {verb} {added} that bronze lacked"
              + (f"; {left} not read by bronze's query yet are left to it" if left else ""))
        added_any = added_any or bool(added)
    if added_any and not args.dry_run:
        print("silver reads the appended records with its next micro-batch (`lakehouse run silver`)")
    return 0


def _print_rows(columns: list[str], rows: list[list], fmt: str) -> None:
    if fmt == "json":
        for r in rows:
            print(json.dumps(dict(zip(columns, r)), default=str))
    elif fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(columns)
        w.writerows(rows)
    else:
        from common.text import widths

        cells = [[("NULL" if v is None else str(v)) for v in r] for r in rows]
        w = widths([list(columns)] + cells)
        line = "+" + "+".join("-" * (n + 2) for n in w) + "+"
        print(line)
        print("| " + " | ".join(c.ljust(n) for c, n in zip(columns, w)) + " |")
        print(line)
        for r in cells:
            print("| " + " | ".join(v.ljust(n) for v, n in zip(r, w)) + " |")
        print(line)
        print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


def _lake_session(app_name: str, kafka: str | None = None, s3: str = "admin"):
    """(settings, spark) for a command that reads the lake as S3 role ``s3`` (and Kafka as role
    ``kafka``): a down or refusing endpoint is one line, fast, before Spark starts."""
    from common.spark import get_spark
    from common.clients import check_reachable

    settings = get_settings().acting_as(s3)
    check_reachable(settings, kafka=kafka)
    return settings, get_spark(settings, app_name=app_name)


def _cmd_sql(args) -> int:
    from serving.catalog import register_tables

    settings, spark = _lake_session("lakehouse-sql", s3="reader")
    tables = register_tables(spark, settings)
    try:
        df = spark.sql(args.query)
        rows = df.collect()
    except Exception as e:  # AnalysisException and friends: one line, no JVM trace
        from serving.catalog import missing_table_message
        from common.streams import short_error

        if settings.log_level == "DEBUG":
            import traceback

            traceback.print_exc()
        print(f"error: {missing_table_message(str(e), tables) or short_error(e)}", file=sys.stderr)
        return 1
    _print_rows(df.columns, [list(r) for r in rows], args.format)
    return 0


def _json_value(value) -> str:
    """What ``json.dumps`` cannot write itself: times as ISO 8601, anything else as text."""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _cmd_trace(args) -> int:
    from common.clients import check_reachable
    from serving.trace import trace_kafka, trace_order

    if args.what == "order" and len(args.ids) != 1:
        raise SettingsError("usage: lakehouse trace order <order_id>")
    if args.what == "kafka" and (len(args.ids) != 3 or not all(x.isdigit() for x in args.ids[1:])):
        raise SettingsError("usage: lakehouse trace kafka <topic> <partition> <offset>")
    settings = get_settings().acting_as("reader")
    check_reachable(settings, kafka="reader")
    if args.what == "order":
        root = trace_order(settings, args.ids[0])
    else:
        root = trace_kafka(settings, args.ids[0], int(args.ids[1]), int(args.ids[2]))
    print(json.dumps(root.to_dict(), default=_json_value, indent=1) if args.format == "json" else "\n".join(root.lines()))
    return 0


def _cmd_peek(args) -> int:
    from common.spark import get_spark
    from common.streams import ensure_topics_exist, kafka_options

    settings = get_settings().acting_as("reader")
    ensure_topics_exist(settings, [args.topic], role="reader")
    spark = get_spark(settings, app_name="lakehouse-peek")
    # read_committed: the records of aborted transactions (gold's publication after a crash) are not shown
    df = (spark.read.format("kafka").options(**kafka_options(settings, [args.topic], role="reader", startingOffsets="earliest",
                                                             **{"kafka.isolation.level": "read_committed"})).load()
          .selectExpr("CAST(key AS STRING) AS key", "CAST(value AS STRING) AS value", "topic", "partition",
                      "offset", "timestamp")
          .orderBy("timestamp", "partition", "offset").limit(args.limit))
    rows = df.collect()
    _print_rows(df.columns, [list(r) for r in rows], args.format)
    return 0


def _cmd_dashboard(args) -> int:
    from common.clients import check_reachable
    from serving.dashboard import serve

    settings = get_settings().acting_as("reader")
    changes = {k: v for k, v in (("dashboard_port", args.port), ("dashboard_host", args.host)) if v is not None}
    settings = settings.with_overrides(**changes) if changes else settings
    check_reachable(settings, kafka=None)
    return serve(settings)


def _cmd_status(args) -> int:
    from common.clients import check_reachable
    from common.pipeline import STAGES
    from serving.status import format_drift, format_owners, format_status, read_status

    settings = get_settings().acting_as("reader")
    check_reachable(settings, kafka=None)
    from app.dataflow import graph

    rows = read_status(settings, graph(settings))
    if not rows:
        print("no streaming query has reported progress yet (start one with `lakehouse run ...`)")
        return 0
    print("\n".join(format_status(rows) + format_drift(rows) + [""] + format_owners(settings, STAGES)))
    return 0


def _cmd_sql_server(args) -> int:
    from serving.sqlserver import serve

    return serve(get_settings().acting_as("reader"), port=args.port, refresh=args.refresh)


def _cmd_spark_sql(args) -> int:
    from serving.sqlserver import spark_sql_shell

    return spark_sql_shell(get_settings().acting_as("reader"), args.args)


def _cmd_dq(args) -> int:
    from data_quality.runner import run_dq

    settings, spark = _lake_session("lakehouse-dq", s3="quality")
    return run_dq(spark, settings, args.layer, args.details)


def _cmd_customers(args) -> int:
    from silver import customers

    settings, spark = _lake_session("lakehouse-customers", s3="customers")
    path = Path(args.file) if args.file else customers.DEFAULT_FILE
    n = customers.load(spark, settings, path)
    print(f"loaded {n} customers from {path} into {settings.table_path('silver', 'customers')}")
    return 0


def _cmd_maintain(args) -> int:
    from serving.catalog import list_tables
    from common.tables import maintain

    if args.vacuum_hours is not None and args.vacuum_hours < 168:
        raise SettingsError(f"--vacuum-hours {args.vacuum_hours:g} is below Delta's 168-hour safety margin "
                            "(a running stream or a time-travel reader may still need those files); use >= 168")
    settings, spark = _lake_session("lakehouse-maintain")
    layers = LAYERS + (OPS,) if args.layer == "all" else (args.layer,)
    for layer, names in list_tables(settings).items():
        for name in names if layer in layers else ():
            r = maintain(spark, settings.table_path(layer, name), args.vacuum_hours)
            print(f"{layer}.{name}: {r['files_before']} -> {r['files_after']} files", flush=True)
    return 0


def _cmd_demo(args) -> int:
    from app.demo import demo

    # one process for every step: each zone's bucket with the key of the role that acts there
    return demo(get_settings().acting_as(*STAGES, "customers", "quality"), count=args.count)


def build_parser() -> argparse.ArgumentParser:
    from app.runner import add_run_options

    p = argparse.ArgumentParser(prog="lakehouse", description="Streaming medallion lakehouse on Spark + Delta")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="every log line and full stack traces (also LAKEHOUSE_LOG_LEVEL=DEBUG)")
    verbose = argparse.ArgumentParser(add_help=False)  # also accepted after the command
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[verbose], **kw)

    s = add("setup", help="fetch pinned jars from Maven Central, build MinIO (tests: Chromium and actionlint for "
                          "the tests; jvm: a class archive that cuts every later start, needs the stack; s3: the "
                          "lake's buckets and a MinIO user and policy per S3 role, with MinIO's root key; kafka: "
                          "the roles' SCRAM users, their ACLs and the topics, as the Kafka admin)")
    s.add_argument("what", nargs="?", default="all",
                   choices=("jars", "minio", "all", "browser", "tests", "jvm", "s3", "kafka"))
    s.add_argument("--force", action="store_true", help="jvm: write the class archive again")
    s.set_defaults(func=_cmd_setup)

    s = add("stack", help="local Kafka + MinIO: up | down | status (kafka: the broker alone, in the "
                          "foreground, on every interface: docker-compose's kafka service)")
    s.add_argument("action", choices=("up", "down", "status", "kafka"))
    s.set_defaults(func=_cmd_stack)

    s = add("config", help="print the effective settings (secrets redacted)")
    s.set_defaults(func=_cmd_config)

    s = add("produce", help="generate events into Kafka and append them to the ledger")
    s.add_argument("--topic", help="one source topic, or all (default)")
    s.add_argument("--count", type=int, help="records per topic (default 100, or no limit with --duration; "
                   "with both, whichever ends first)")
    s.add_argument("--duration", type=float, help="seconds to produce for (instead of --count)")
    s.add_argument("--rate", type=float, default=0.0, help="records/s per topic (0 = as fast as possible)")
    s.add_argument("--seed", type=int, default=42)
    s.add_argument("--customers", type=int, default=20, help="customer ids CUST-001..CUST-N")
    s.add_argument("--duplicate-pct", type=float, default=0.0, help="orders re-sent unchanged")
    s.add_argument("--late-pct", type=float, default=0.0, help="records with an event time in the past")
    s.add_argument("--late-by", type=float, default=600.0, help="how late, in seconds (default 600)")
    s.add_argument("--malformed-pct", type=float, default=0.0,
                   help="truncated JSON, non-JSON, wrong types, missing fields, negative quantity")
    s.add_argument("--start-time", help="ISO time of the first event (default: wall clock); records are still "
                   "sent now, with the send time as their Kafka timestamp")
    s.add_argument("--event-spacing", type=float, default=0.001,
                   help="seconds of event time between records when --rate is 0 (default 0.001)")
    s.add_argument("--extra-field", action="append", metavar="PATH=VALUE",
                   help="a field a producer added, in every record that has PATH's object (schema drift): "
                        "channel=web, metrics.gpu_percent=9.5, items.color=red; repeatable")
    s.add_argument("--ledger", help="ledger file (default <stack_dir>/ledger.jsonl)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_produce)

    s = add("run", help="run a stage (or all) as streaming queries")
    s.add_argument("stage", help="bronze | silver | gold | all")
    add_run_options(s)
    s.set_defaults(func=_cmd_run)

    s = add("plan", help="print the pipeline's graph: queries, sources, sinks, checkpoints")
    s.set_defaults(func=_cmd_plan)

    s = add("reset", help="delete a stage's (and later stages') tables and checkpoints to rebuild them")
    s.add_argument("stage", choices=("bronze", "silver", "gold"))
    s.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    s.set_defaults(func=_cmd_reset)

    s = add("refresh", help="empty a stage's (or a table's query's) tables and later stages', keep their old "
                            "versions for time travel, and rebuild them from the layer below")
    s.add_argument("target", help="bronze | silver | gold, or a table (layer.table): the query writing it")
    s.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    s.add_argument("--include-bronze", action="store_true",
                   help="allow refreshing bronze (re-read Kafka from its start; refused if retention deleted records)")
    s.add_argument("--no-run", action="store_true", help="only empty and move aside; the next `lakehouse run` rebuilds")
    s.set_defaults(func=_cmd_refresh)

    s = add("replay", help="re-read Kafka from a time or offsets into bronze, appending only the records it lacks")
    s.add_argument("stage", choices=("bronze",))
    start = s.add_mutually_exclusive_group(required=True)
    start.add_argument("--from-time", help="ISO 8601 time (UTC unless given): each partition from its first record then")
    start.add_argument("--from-offsets", help='JSON {"<topic>": {"<partition>": <offset>, ...}, ...}')
    s.add_argument("--dry-run", action="store_true", help="only count what would be appended")
    s.set_defaults(func=_cmd_replay)

    s = add("sql", help="run Spark SQL over the lake's tables (bronze.*, silver.*, gold.*)")
    s.add_argument("query")
    s.add_argument("--format", choices=("table", "csv", "json"), default="table")
    s.set_defaults(func=_cmd_sql)

    s = add("peek", help="batch read of a Kafka topic (debugging)")
    s.add_argument("topic")
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--format", choices=("table", "csv", "json"), default="table")
    s.set_defaults(func=_cmd_peek)

    s = add("sql-server", help="Spark Thrift JDBC server over bronze.*, silver.*, gold.*")
    s.add_argument("--port", type=int, default=10000)
    s.add_argument("--refresh", type=float, default=30.0, help="seconds between table re-registrations")
    s.set_defaults(func=_cmd_sql_server)

    # (no -v of ours: spark-sql has its own)
    s = sub.add_parser("spark-sql", help="Spark's spark-sql shell with the lake's tables registered by name")
    s.set_defaults(args=[])  # everything after `spark-sql` goes to spark-sql (see main)
    s.set_defaults(func=_cmd_spark_sql)

    s = add("dashboard", help="web page of gold KPIs and pipeline health, refreshing itself (Streamlit)")
    s.add_argument("--port", type=int, help="default LAKEHOUSE_DASHBOARD_PORT (8501)")
    s.add_argument("--host", help="default LAKEHOUSE_DASHBOARD_HOST (127.0.0.1)")
    s.set_defaults(func=_cmd_dashboard)

    s = add("trace", help="one record's path: Kafka, bronze, silver (or quarantine / late / duplicate), gold, "
                          "the published message")
    s.add_argument("what", choices=("order", "kafka"))
    s.add_argument("ids", nargs="+", metavar="ID", help="order: <order_id>; kafka: <topic> <partition> <offset>")
    s.add_argument("--format", choices=("tree", "json"), default="tree")
    s.set_defaults(func=_cmd_trace)

    s = add("dq", help="Great Expectations suites over the current tables; non-zero exit on failure")
    s.add_argument("--layer", choices=("bronze", "silver", "gold", "reconciliation", "all"), default="all")
    s.add_argument("--details", action="store_true", help="list every expectation, not only the failed ones")
    s.set_defaults(func=_cmd_dq)

    s = add("status", help="every streaming query's last progress and how far behind it is")
    s.set_defaults(func=_cmd_status)

    s = add("customers", help="load the customer dimension (silver.customers) from a CSV file")
    s.add_argument("action", choices=("load",))
    s.add_argument("--file", help="CSV with customer_id,nom,ville,segment (default: the shipped file)")
    s.set_defaults(func=_cmd_customers)

    s = add("maintain", help="OPTIMIZE (compact small files) and optionally VACUUM the lake's tables")
    s.add_argument("--layer", choices=("bronze", "silver", "gold", "all"), default="gold")
    s.add_argument("--vacuum-hours", type=float, help="also VACUUM, keeping files younger than this (>= 168)")
    s.set_defaults(func=_cmd_maintain)

    s = add("demo", help="stack up, produce a sample, run the pipeline, show the tables")
    s.add_argument("--count", type=int, default=2000)
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    from app.runner import guarded, setup_logging, verbose_requested

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "spark-sql":
        args.args = extra  # e.g. -e "SELECT ...": spark-sql's own options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    verbose = verbose_requested(args.verbose)
    setup_logging(verbose)
    return guarded(lambda: args.func(args), verbose)


if __name__ == "__main__":
    sys.exit(main())
