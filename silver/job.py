"""Silver job: one streaming query per source (orders, logs, metrics), bronze Delta -> silver Delta.

Each query classifies bronze records (valid / quarantine / drop / late), drops duplicates under
a watermark, and writes, per micro-batch and idempotently (txnAppId = the checkpoint's query id
+ table, txnVersion = batch id), its silver table(s), ``silver.quarantine``,
``silver.late_records`` and ``silver.rule_outcomes``: side by side, and only the non-empty ones
(rule outcomes, which also count each route, are written every batch).

    spark-submit silver/job.py [--trigger availableNow] [--sink console]
    lakehouse run silver [--trigger ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyspark.sql import functions as F  # noqa: E402
from pyspark.sql.types import LongType, StringType, StructField, StructType, TimestampType  # noqa: E402

from bronze.transforms import KAFKA_SCHEMA, to_bronze  # noqa: E402
from common import pipeline, streams  # noqa: E402
from common.errors import StreamFailedError  # noqa: E402
from common.settings import Settings, interval_seconds  # noqa: E402
from common.tables import append_idempotent, ensure_table, require_table  # noqa: E402
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


def _batch_writer(settings: Settings, flow, ctx: streams.BatchContext, kind: str, delay_s: float):
    def write(batch, batch_id: int) -> None:
        batch.persist()
        try:
            spark = batch.sparkSession
            outcomes = T.rule_outcomes(batch, kind)  # one pass over the batch; also counts each route
            routed = {rule.split(":", 1)[1]: failed for _, rule, action, failed, _ in outcomes if action == "count"}
            needed = {"valid": routed.get("valid", 0), "quarantine": routed.get("quarantine", 0),
                      "late_records": routed.get("late", 0)}
            rows = [(flow.name, batch_id, t, rule, action, failed, checked)
                    for t, rule, action, failed, checked in outcomes]
            recorded = (spark.createDataFrame(rows, "query string, batch_id long, table string, rule string, "
                                                    "action string, failed long, checked long")
                        .withColumn("recorded_at", F.current_timestamp()))
            tasks = [lambda: append_idempotent(recorded, settings.table_path("silver", "rule_outcomes"),
                                               ctx.app_id(spark, "rule_outcomes"), batch_id)]
            for table, df in _outputs(settings, kind, batch, delay_s).items():
                if needed.get(table, needed["valid"]):  # empty writes would still be commits
                    tasks.append(lambda df=df, table=table: append_idempotent(
                        df, settings.table_path("silver", table), ctx.app_id(spark, table), batch_id))
            streams.run_parallel(tasks)
            failing = [(rule, failed) for _, rule, action, failed, _ in outcomes if action == "fail" and failed]
            if failing:
                raise StreamFailedError(f"rule {failing[0][0]} (action fail) broken by {failing[0][1]} rows in "
                                        f"batch {batch_id} of {flow.name}")
        finally:
            batch.unpersist()
    return write


def start(spark, settings: Settings, options: streams.StreamOptions, kinds=pipeline.SILVER_KINDS) -> list:
    from common.checkpoints import check_not_orphaned

    if options.sink == "delta":
        ensure_tables(spark, settings)
    specs = []
    for kind in kinds:
        flow = pipeline.flow(settings, f"silver_{kind}")
        topic = pipeline.silver_topic(settings, kind)
        bronze_path = settings.table_path("bronze", settings.bronze_table_for(topic))
        require_table(spark, bronze_path, f"bronze table for {topic}", "run bronze first (`lakehouse run bronze`)")
        delay = pipeline.watermark(settings, kind)
        delay_s = interval_seconds(delay)
        classified = T.classify(streams.read_delta(spark, bronze_path), kind, delay_s)
        deduped = T.dedupe(classified, kind, delay)
        if options.sink == "console":
            specs.append(dict(df=deduped.drop("value", "key"), name=flow.name, checkpoint="", options=options))
            continue
        own = {t: pipeline.table_path(settings, t) for t in flow.tables if t.split(".", 1)[1] in (kind, "order_items")}
        check_not_orphaned(spark, flow.checkpoint, flow.name, own, "silver")
        specs.append(streams.flow_spec(flow, deduped, options,
                                       foreach_batch=_batch_writer(settings, flow, streams.BatchContext(flow), kind,
                                                                   delay_s)))
    return streams.start_all(specs)


if __name__ == "__main__":
    from common.runner import main_for_stage

    sys.exit(main_for_stage("silver"))
