"""Silver job: one streaming query over the three bronze tables, bronze Delta -> silver Delta.

Each source's records are classified (valid / quarantine / drop / late) and deduplicated under
that source's own watermark; the three streams are unioned into one query, whose micro-batch
writes, exactly once (commits tagged with the checkpoint's query id + table and the batch id), the
silver tables, ``silver.quarantine``, ``silver.late_records`` and ``silver.rule_outcomes``: side
by side, one commit per table, and only the non-empty ones.

    spark-submit silver/job.py [--trigger availableNow] [--sink console]
    lakehouse run silver [--trigger ...]
"""

from __future__ import annotations

import sys
from functools import reduce
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyspark.sql import functions as F  # noqa: E402
from pyspark.sql.types import LongType, StringType, StructField, StructType, TimestampType  # noqa: E402

from bronze.transforms import KAFKA_SCHEMA, to_bronze  # noqa: E402
from common import pipeline, streams  # noqa: E402
from common.errors import StreamFailedError  # noqa: E402
from common.settings import Settings, interval_seconds  # noqa: E402
from common.tables import ensure_table, require_table  # noqa: E402
from silver import transforms as T  # noqa: E402
from silver.rules import rules_for  # noqa: E402

COORD_NOT_NULL = ("topic", "partition", "offset")
NOT_NULL = {
    "orders": ("order_id", "customer_id", "event_time", "total", "status") + COORD_NOT_NULL,
    "order_items": ("order_id", "line", "product_id", "quantity", "unit_price", "subtotal") + COORD_NOT_NULL,
    "logs": ("event_time", "level", "module") + COORD_NOT_NULL,
    "metrics": ("event_time", "host") + COORD_NOT_NULL,
    "quarantine": ("reason", "target_table") + COORD_NOT_NULL,
    "late_records": ("event_time", "target_table") + COORD_NOT_NULL,
}
RULE_OUTCOMES_SCHEMA = StructType([
    StructField("query", StringType(), False), StructField("batch_id", LongType(), False),
    StructField("table", StringType(), False), StructField("rule", StringType(), False),
    StructField("action", StringType(), False), StructField("failed", LongType(), False),
    StructField("checked", LongType(), False), StructField("recorded_at", TimestampType(), False),
])


def _outputs(settings: Settings, kind: str, classified, delay_s: float) -> dict:
    """silver table name -> rows, for one batch of classified rows."""
    valid = classified.filter(F.col("route") == "valid")
    out = {kind: T.to_table(valid, kind)}
    if kind == "orders":
        out["order_items"] = T.to_order_items(valid)
    out["quarantine"] = T.to_quarantine(classified.filter(F.col("route") == "quarantine"))
    out["late_records"] = T.to_late(classified.filter(F.col("route") == "late"), delay_s)
    return out


def _checks(table: str) -> dict[str, str]:
    return {r.name: r.sql("") for r in rules_for(table) if r.constraint and r.on_table}


def ensure_tables(spark, settings: Settings) -> None:
    """Create every silver table with its NOT NULL keys and CHECK constraints (from silver.rules)."""
    empty_bronze = to_bronze(spark.createDataFrame([], KAFKA_SCHEMA))
    for kind in pipeline.SILVER_KINDS:
        classified = T.classify(empty_bronze, kind, 0)
        for table, df in _outputs(settings, kind, classified, 0).items():
            ensure_table(spark, settings.table_path("silver", table), df,
                         not_null=NOT_NULL.get(table, ()), checks=_checks(table))
    ensure_table(spark, settings.table_path("silver", "rule_outcomes"),
                 spark.createDataFrame([], RULE_OUTCOMES_SCHEMA))


def _batch_writer(settings: Settings, flow, ctx: streams.BatchContext):
    delays = {k: interval_seconds(pipeline.watermark(settings, k)) for k in pipeline.SILVER_KINDS}

    def write(batch, batch_id: int) -> None:
        batch.persist()
        try:
            spark = batch.sparkSession
            outcomes, parts = [], {}
            for kind in pipeline.SILVER_KINDS:
                rows = batch.filter(F.col("kind") == kind)
                found = T.rule_outcomes(rows, kind)  # one pass over the cached batch; counts each route too
                routed = {rule.split(":", 1)[1]: n for _, rule, action, n, _ in found if action == "count"}
                if not any(routed.values()):
                    continue
                outcomes += found
                for table, df in _outputs(settings, kind, rows, delays[kind]).items():
                    n = routed.get({"quarantine": "quarantine", "late_records": "late"}.get(table, "valid"), 0)
                    if n:  # an empty write would still be a commit
                        parts.setdefault(table, []).append(df)
            recorded = (spark.createDataFrame([(flow.name, batch_id, *o) for o in outcomes],
                                              "query string, batch_id long, table string, rule string, "
                                              "action string, failed long, checked long")
                        .withColumn("recorded_at", F.current_timestamp()))
            tables = {"rule_outcomes": [recorded]} if outcomes else {}
            tables.update(parts)
            streams.run_parallel([
                (lambda table=table, dfs=dfs: ctx.append(
                    reduce(lambda a, b: a.unionByName(b), dfs), table, settings.table_path("silver", table), batch_id))
                for table, dfs in tables.items()])
            failing = [(rule, failed) for _, rule, action, failed, _ in outcomes if action == "fail" and failed]
            if failing:
                raise StreamFailedError(f"rule {failing[0][0]} (action fail) broken by {failing[0][1]} rows in "
                                        f"batch {batch_id} of {flow.name}")
        finally:
            batch.unpersist()
    return write


def classified_stream(spark, settings: Settings, kind: str):
    """One source's bronze stream, classified and deduplicated under its own watermark."""
    topic = pipeline.silver_topic(settings, kind)
    bronze_path = settings.table_path("bronze", settings.bronze_table_for(topic))
    require_table(spark, bronze_path, f"bronze table for {topic}", "run bronze first (`lakehouse run bronze`)")
    delay = pipeline.watermark(settings, kind)
    classified = T.classify(streams.read_delta(spark, settings, bronze_path), kind, interval_seconds(delay))
    return T.dedupe(classified, kind, delay).withColumn("kind", F.lit(kind))


def start(spark, settings: Settings, options: streams.StreamOptions) -> list:
    from common.checkpoints import check_not_orphaned

    (flow,) = pipeline.flows(settings, "silver")
    if options.sink == "delta":
        ensure_tables(spark, settings)
    stream = reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True),
                    [classified_stream(spark, settings, kind) for kind in pipeline.SILVER_KINDS])
    if options.sink == "console":
        return streams.start_all([dict(df=stream.drop("value", "key"), name=flow.name, checkpoint="",
                                       options=options)])
    check_not_orphaned(spark, flow.checkpoint, flow.name, pipeline.sink_paths(settings, flow), "silver")
    return streams.start_all([streams.flow_spec(flow, stream, options,
                                                foreach_batch=_batch_writer(settings, flow, streams.BatchContext(flow)))])


if __name__ == "__main__":
    from common.runner import main_for_stage

    sys.exit(main_for_stage("silver"))
