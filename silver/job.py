"""Silver job: one streaming query over the three bronze tables, bronze Delta -> silver Delta.

Each source's records are classified (valid / quarantine / drop) and deduplicated
(``silver.transforms.dedupe``: same natural key within 2 x the source's delay of processing); the
three streams are unioned into one query, whose micro-batch writes, exactly once (commits tagged
with the checkpoint's query id + table and the batch id), the silver tables,
``silver.quarantine``, ``silver.late_records`` and ``silver.rule_outcomes``: side by side, one
commit per table, and only the non-empty ones.

Late means behind the watermark, with Spark's semantics per source (``silver.watermarks``): a
valid record whose event time is at or behind the greatest valid event time of its source in the
earlier micro-batches, minus the source's delay, goes to ``silver.late_records`` with that
watermark. Nothing else drops a record unseen: the dedup operator's own watermark follows
processing time, so it never discards a late record. Per source,
bronze = silver + quarantine + dropped + late + duplicates (``route:*`` counts in
``silver.rule_outcomes``; duplicates in the query's progress, ``numDroppedDuplicateRows``).

    spark-submit app/submit.py silver [--trigger availableNow] [--sink console]
    lakehouse run silver [--trigger ...]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from functools import reduce

from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType, TimestampType

from bronze.transforms import KAFKA_SCHEMA, to_bronze
from common import pipeline, streams
from common.batches import BatchContext, computed_once, run_parallel
from common.errors import SchemaDriftError, StreamFailedError
from common.settings import Settings, interval_seconds
from common.streams import QuerySpec
from common.tables import NotReady, ensure_all, require_table, statistics_on
from silver import transforms as T
from silver.rules import rules_for
from silver.watermarks import EventClock, describe

log = logging.getLogger("lakehouse.silver")
COORD_NOT_NULL = ("topic", "partition", "offset")
NOT_NULL = {
    "orders": ("order_id", "customer_id", "event_time", "total", "status") + COORD_NOT_NULL,
    "order_items": ("order_id", "line", "product_id", "quantity", "unit_price", "subtotal") + COORD_NOT_NULL,
    "logs": ("event_time", "level", "module") + COORD_NOT_NULL,
    "metrics": ("event_time", "host") + COORD_NOT_NULL,
    "quarantine": ("reason", "target_table") + COORD_NOT_NULL,
    "late_records": ("event_time", "target_table") + COORD_NOT_NULL,
}
# Per-file statistics only on the columns readers filter a source's table by (event time, the
# business keys, the Kafka coordinates `lakehouse trace` looks up): Delta computes them in every
# write task, and on every column they were ~20 % of an append's CPU (bench/README.md, 2026-12-07,
# session 39). The side tables (quarantine, late_records, rule_outcomes: a file of a few rows per
# batch) keep Delta's default.
STATS_COLUMNS = {
    "orders": ("order_id", "customer_id", "event_time", "partition", "offset"),
    "order_items": ("order_id", "customer_id", "event_time", "product_id", "partition", "offset"),
    "logs": ("event_time", "level", "module", "partition", "offset"),
    "metrics": ("event_time", "host", "partition", "offset"),
}
RULE_OUTCOMES_SCHEMA = StructType([
    StructField("query", StringType(), False), StructField("batch_id", LongType(), False),
    StructField("table", StringType(), False), StructField("rule", StringType(), False),
    StructField("action", StringType(), False), StructField("failed", LongType(), False),
    StructField("checked", LongType(), False), StructField("recorded_at", TimestampType(), False),
])


def _outputs(kind: str, kept, promoted: tuple[str, ...] = ()) -> dict:
    """silver table name -> rows, for one batch of one source's classified, deduplicated rows
    (``promoted``: the fields its table has a column for beyond the schema, ``addNewColumns``)."""
    valid = kept.filter(T.route_is("valid"))
    out = {kind: T.promote(valid, kind, promoted) if promoted else T.to_table(valid, kind)}
    if kind == "orders":
        out["order_items"] = T.to_order_items(valid)
    out["quarantine"] = T.to_quarantine(kept.filter(T.route_is("quarantine")))
    return out


# a batch's few rows of these, unioned over the sources, came in one file per source and shuffle
# partition (6): one file per commit keeps them as few as the compactor expects (the soak counted
# 280 files in an hour for silver's ~50 commits, never compacted)
SIDE_TABLES = ("quarantine", "late_records", "rule_outcomes")


def _one_file_if_side(table: str, df):
    return df.coalesce(1) if table in SIDE_TABLES else df


def _checks(table: str) -> dict[str, str]:
    return {r.name: r.sql("") for r in rules_for(table) if r.constraint and r.on_table}


# the tables silver's query writes (its flow's sinks, ``app.dataflow``)
TABLES = ("orders", "order_items", "logs", "metrics", "quarantine", "late_records", "rule_outcomes")


def ensure_tables(spark, settings: Settings, flow, write: bool = True) -> None:
    """Create every silver table (``flow``'s sinks) with its NOT NULL keys and CHECK constraints
    (from silver.rules); ``write=False``: only check them (``tables.ensure_table``)."""
    schemas = table_schemas(spark)
    paths = flow.sink_paths(settings)
    if set(paths) != {f"silver.{t}" for t in schemas}:
        raise ValueError(f"silver writes {sorted(schemas)}, its flow declares {sorted(paths)}")
    ensure_all(spark, [(paths[f"silver.{table}"], schema, {"not_null": NOT_NULL.get(table, ()),
                                                            "checks": _checks(table), "properties": _properties(table)})
                       for table, schema in schemas.items()], write=write)


_SCHEMAS: dict[tuple, dict[str, StructType]] = {}  # silver.rules.RULES -> table_schemas' answer


def table_schemas(spark) -> dict[str, StructType]:
    """Each silver table's schema, as the batch writer's transforms produce it from bronze's: a
    function of the code and the rules alone (a column added by ``addNewColumns`` comes with
    ``ensure_table``'s ALTER at the batch), so built once a process (its plans, ~0.8 s of py4j calls,
    were built again at every silver start)."""
    from silver import rules

    key = tuple(rules.RULES)
    if key not in _SCHEMAS:
        empty_bronze = to_bronze(spark.createDataFrame([], KAFKA_SCHEMA))
        tables: dict = {}
        for kind in pipeline.SILVER_KINDS:  # quarantine and late_records: one schema for every source
            classified = T.classify(empty_bronze, kind, 0)
            for table, df in dict(_outputs(kind, classified), late_records=T.to_late(classified, 0, 0, "")).items():
                tables.setdefault(table, df.schema)
        tables["rule_outcomes"] = RULE_OUTCOMES_SCHEMA
        _SCHEMAS[key] = tables
    return _SCHEMAS[key]


def _properties(table: str) -> dict[str, str]:
    return statistics_on(STATS_COLUMNS[table]) if table in STATS_COLUMNS else {}


DROPPED_BY = "silver (event-time watermark of its source)"


def _route_expr(watermarks: dict[str, int | None]):
    """The route, ``late`` for a valid row at or behind its source's watermark: one SQL expression
    (one Column, a few py4j round trips; built from Columns it took ~200 per batch)."""
    late = " OR ".join(f"(kind = '{kind}' AND unix_micros(event_time) <= {int(wm) * 1000})"
                       for kind, wm in watermarks.items() if wm is not None)
    return F.expr(f"CASE WHEN route = 'valid' AND ({late}) THEN 'late' ELSE route END") if late else F.col("route")


# a field becomes a column (addNewColumns) when its name is one Delta and SQL take as is
COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class Evolution:
    """Schema drift, per source, as its setting says (LAKEHOUSE_SCHEMA_EVOLUTION_<KIND>): what a
    batch's drift (``transforms.Drift``) means for its writes.

    * ``rescue``: unknown fields stay in each row's ``_rescued_data``; reported only.
    * ``addNewColumns``: a new top-level field (a name Delta takes as is) becomes a string column
      of the source's silver table, in the batch that first brings it (Delta schema evolution on
      that append); later batches fill it. Picked up by the running silver at once; a Delta stream
      reading the table (gold) stops with a retryable schema change and is restarted by the run
      (``streams.await_all``). The columns a table gained are read from it at start.
    * ``fail``: a batch with an unknown field, or whose every record lacks a required one, stops the
      stage before it writes anything (``check``); it resumes at that batch once the setting changes.
    """

    def __init__(self, spark, settings: Settings, paths: dict[str, str]):
        self.settings = settings
        self.modes = {src.kind: src.evolution for src in settings.sources}
        evolving = [kind for kind, mode in self.modes.items() if mode == "addNewColumns"]
        empty = to_bronze(spark.createDataFrame([], KAFKA_SCHEMA)) if evolving else None
        # the columns silver's code writes, and those the table gained (only where they can grow)
        self.base = {kind: {c.lower() for c in T.to_table(T.classify(empty, kind, 0), kind).columns}
                     for kind in evolving}
        self.added = {kind: tuple(f.name for f in spark.read.format("delta").load(paths[f"silver.{kind}"]).schema.fields
                                  if f.name.lower() not in self.base[kind])
                      for kind in evolving}
        self._warned: set[tuple[str, str]] = set()

    def new_columns(self, kind: str, drift: "T.Drift") -> tuple[str, ...]:
        """The top-level fields of ``drift`` that become columns of ``kind``'s table in this batch."""
        if self.modes[kind] != "addNewColumns":
            return ()
        have = self.base[kind] | {c.lower() for c in self.added[kind]}
        return tuple(n for n in drift.unknown if "." not in n and COLUMN_NAME.match(n) and n.lower() not in have)

    def promoted(self, kind: str, new: tuple[str, ...]) -> tuple[str, ...]:
        return self.added.get(kind, ()) + new

    def committed(self, kind: str, new: tuple[str, ...]) -> None:
        if new:
            self.added[kind] = self.added[kind] + new

    def check(self, flow_name: str, batch_id: int, drifts: dict) -> None:
        """Stop before the batch's writes if a source set to ``fail`` drifted."""
        for kind, drift in drifts.items():
            src, setting = self.settings.source(kind), f"LAKEHOUSE_SCHEMA_EVOLUTION_{kind.upper()}"
            if self.modes[kind] == "fail" and (drift.unknown or drift.gone):
                what = (f"a field the schema of silver.{kind} does not know: {', '.join(drift.unknown)}" if drift.unknown
                        else f"records without {', '.join(drift.gone)} (every record of the batch lacks it)")
                raise SchemaDriftError(
                    f"{flow_name} batch {batch_id}: topic {src.topic} sent {what}; nothing of the batch was written "
                    f"({setting}=fail). Set {setting}=rescue (keep unknown fields in _rescued_data) or addNewColumns "
                    f"(make them columns) and restart: the stage resumes at this batch")

    def report(self, flow_name: str, batch_id: int, drifts: dict, new_columns: dict) -> None:
        """One warning per run, source and field: what came, and where it went."""
        for kind, drift in drifts.items():
            src = self.settings.source(kind)
            for name in drift.unknown + drift.gone:
                if (kind, name) in self._warned:
                    continue
                self._warned.add((kind, name))
                if name in drift.gone:
                    what, where = "records no longer have the field", "quarantined as missing it"
                else:
                    what = "sends a field the schema does not know:"
                    where = (f"now a column of silver.{kind}" if name in new_columns.get(kind, ())
                             else f"a column of silver.{kind}" if name in self.added.get(kind, ())
                             else "kept in _rescued_data")
                log.warning("%s batch %d: topic %s %s %s (%s; LAKEHOUSE_SCHEMA_EVOLUTION_%s=%s)", flow_name, batch_id,
                            src.topic, what, name, where, kind.upper(), self.modes[kind])


def _batch_writer(ctx: BatchContext):
    settings, flow = ctx.settings, ctx.flow
    delays = {src.kind: interval_seconds(src.watermark) for src in settings.sources}
    clock = EventClock(flow.checkpoint, delays)
    evolution = Evolution(ctx.run.spark, settings, flow.sink_paths(settings))
    # built once, reused by every batch (see silver.transforms, _coords)
    per_source = (*T.outcome_columns(pipeline.SILVER_KINDS), *T.drift_columns(),
                  F.max(F.when(F.col("route").isin("valid", "late"), F.unix_millis("event_time"))).alias("max_ms"))
    of_kind = {kind: F.col("kind") == kind for kind in pipeline.SILVER_KINDS}

    def write(batch, batch_id: int) -> None:
        with computed_once(batch) as batch:
            spark = batch.sparkSession
            watermarks = clock.watermarks(spark, batch_id)
            routed = batch.withColumn("route", _route_expr(watermarks))
            # one pass over the cached batch: every rule and route per source, and its greatest valid
            # event time (late ones included: at or behind the watermark, they cannot move it)
            counts = {r["kind"]: r for r in routed.groupBy("kind").agg(*per_source).collect()}
            drifts = {k: d for k, d in ((k, T.Drift.of(r)) for k, r in counts.items()) if d}
            evolution.check(flow.name, batch_id, drifts)  # before anything of the batch is written
            new_columns = {k: evolution.new_columns(k, d) for k, d in drifts.items()}
            evolution.report(flow.name, batch_id, drifts, new_columns)
            clock.record(spark, batch_id, {k: r["max_ms"] for k, r in counts.items()})
            outcomes, parts = [], {}
            for kind, row in counts.items():
                found = T.outcomes(row, kind)
                outcomes += found
                routed_n = {rule.split(":", 1)[1]: n for _, rule, action, n, _ in found if action == "count"}
                rows = routed.filter(of_kind[kind])
                if routed_n.get("late"):
                    parts.setdefault("late_records", []).append(
                        T.to_late(rows.filter(T.route_is("late")), watermarks[kind], delays[kind], DROPPED_BY))
                    _warn_if_many_late(settings, flow, kind, batch_id, routed_n["late"], int(row["checked"]),
                                       watermarks[kind])
                for table, df in _outputs(kind, rows, evolution.promoted(kind, new_columns.get(kind, ()))).items():
                    if routed_n.get("quarantine" if table == "quarantine" else "valid", 0):  # an empty write is a commit
                        parts.setdefault(table, []).append(df)
            routes = {x: sum(n for _, rule, _, n, _ in outcomes if rule == f"route:{x}")
                      for x in ("quarantine", "drop", "late")}
            # checked: the batch's records after the dedup operator (the event log's duplicates are
            # the records read minus these, whatever Spark's numDroppedDuplicateRows says)
            after = clock.watermarks(spark, batch_id + 1)  # what the next batch is judged by
            drift_log = {k: {**d.as_json(), **({"new_columns": list(new_columns[k])} if new_columns.get(k) else {})}
                         for k, d in drifts.items()}
            ctx.count(batch_id, describe(after), quarantined=routes["quarantine"], dropped=routes["drop"],
                      late=routes["late"], checked=sum(int(r["checked"] or 0) for r in counts.values()),
                      rescued=sum(d.rescued for d in drifts.values()),
                      **({"schema_drift": json.dumps(drift_log, sort_keys=True)} if drifts else {}))
            counted = StructType(RULE_OUTCOMES_SCHEMA.fields[:-1])  # recorded_at: the commit's clock, below
            recorded = (spark.createDataFrame([(flow.name, batch_id, *o) for o in outcomes], counted)
                        .withColumn("recorded_at", F.current_timestamp()))
            tables = {"rule_outcomes": [recorded]} if outcomes else {}
            tables.update(parts)
            run_parallel([
                (lambda table=table, dfs=dfs: ctx.append(
                    _one_file_if_side(table, reduce(lambda a, b: a.unionByName(b), dfs)), f"silver.{table}",
                    batch_id, merge_schema=bool(new_columns.get(table)), **_watermark_tag(table, after)))
                for table, dfs in tables.items()])
            for kind, new in new_columns.items():
                evolution.committed(kind, new)
            failing = [(rule, failed) for _, rule, action, failed, _ in outcomes if action == "fail" and failed]
            if failing:
                raise StreamFailedError(f"rule {failing[0][0]} (action fail) broken by {failing[0][1]} rows in "
                                        f"batch {batch_id} of {flow.name}")
    return write


def _watermark_tag(table: str, after: dict[str, int | None]) -> dict:
    """What a commit to a source's table states: the source's watermark after this batch (epoch
    ms; every record at or behind it from the next batch on goes to silver.late_records), so that a
    reader of the table knows which event times are complete (gold closes its windows by it,
    ``gold.windows``)."""
    wm = after.get(pipeline.SOURCE_OF_TABLE.get(table, ""))
    return {"watermark_ms": wm} if wm is not None else {}


def _warn_if_many_late(settings: Settings, flow, kind: str, batch_id: int, late: int, seen: int, wm_ms: int) -> None:
    if late * 100 > settings.late_warn_pct * seen:
        from datetime import datetime, timezone

        wm = datetime.fromtimestamp(wm_ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")
        log.warning("%s batch %d: %d of %d %s records (%.0f%%) were at or behind the watermark %s and went to "
                    "silver.late_records (more than LAKEHOUSE_LATE_WARN_PCT=%d%%)", flow.name, batch_id, late, seen,
                    kind, 100 * late / seen, wm, settings.late_warn_pct)


def classified_stream(spark, settings: Settings, kind: str, bronze, new_checkpoint: bool = False,
                      restored_ms: int = 0):
    """One source's bronze stream (``bronze``: its table), classified and deduplicated
    (``silver.transforms.dedupe``). On a new checkpoint it reads bronze commit by commit from where
    bronze was last empty (``streams.commit_order_start``), so a backlog's micro-batches follow
    Kafka's order."""
    src = settings.source(kind)
    bronze_path = bronze.path(settings)
    require_table(spark, bronze_path, f"bronze table for {src.topic}", "run bronze first (`lakehouse run bronze`)")
    classified = T.classify(streams.read_delta(spark, settings, bronze_path, new_checkpoint), kind,
                            interval_seconds(settings.max_event_time_ahead))
    return T.dedupe(classified, kind, src.watermark, settings.dedup_horizon, restored_ms).withColumn("kind", F.lit(kind))


def queries(run, flows) -> list[QuerySpec]:
    """Silver's query (``flows``: its one flow of the graph, ``app.dataflow``) in ``run``
    (``common.run.RunContext``), for the runner to start."""
    from common.checkpoints import check_not_orphaned, is_new, restored_watermark_ms

    (flow,) = flows
    spark, settings = run.spark, run.settings
    if run.preparing and any(src.evolution == "addNewColumns" for src in settings.sources):
        raise NotReady("a source set to addNewColumns: the tables' columns are read at the start")
    if run.delta:
        # before the tables are created: on a new lake there is then nothing to look into
        check_not_orphaned(spark, flow.checkpoint, flow.name, flow.sink_paths(settings), "silver")
        ensure_tables(spark, settings, flow, write=not run.preparing)
    new_checkpoint = run.delta and is_new(spark, flow.checkpoint)
    restored = restored_watermark_ms(spark, flow.checkpoint) if run.delta and not new_checkpoint else 0
    bronze = dict(zip(pipeline.SILVER_KINDS, flow.sources))  # the flow reads one bronze table per source
    stream = reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True),
                    [classified_stream(spark, settings, kind, bronze[kind], new_checkpoint, restored)
                     for kind in pipeline.SILVER_KINDS])
    if not run.delta:
        return [QuerySpec(stream.drop("value", "key"), flow.name, "", run.options)]
    spec = QuerySpec.of(flow, stream, run.options, foreach_batch=_batch_writer(BatchContext.of(run, flow)))
    if run.preparing:
        spec = dataclasses.replace(spec, stale=lambda: _restored_watermark_binds(spark, settings, flow, restored))
    return [spec]


def _restored_watermark_binds(spark, settings: Settings, flow, built_with: int) -> bool:
    """Silver built before a takeover with the watermark its checkpoint then held (``built_with``):
    the dedup clocks are held at or above the watermark Spark restores (``transforms.dedupe``), so
    the query must be built again if that watermark has moved since and may bind a clock: a clock
    runs at most ``transforms.clock_behind`` behind its batch's time, and the first batch after the
    takeover may be the dead driver's planned one, with its time."""
    import time

    from common.checkpoints import last_planned_batch_ms, restored_watermark_ms

    now = restored_watermark_ms(spark, flow.checkpoint)
    if now == built_with:
        return False
    planned = last_planned_batch_ms(spark, flow.checkpoint)
    if planned is None:  # (unreadable: not known not to bind)
        return True
    batch_ms = min(time.time() * 1000, planned)
    behind = max(T.clock_behind(src.watermark, settings.dedup_horizon) for src in settings.sources)
    return now >= batch_ms - behind * 1000
