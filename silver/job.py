"""Silver job: one streaming query per source (orders, logs, metrics), bronze Delta -> silver Delta.

Each query classifies bronze records (valid / quarantine / drop / late), drops duplicates under
a watermark, and writes, per micro-batch and idempotently (txnAppId/txnVersion), its silver
table(s), ``silver.quarantine``, ``silver.late_records`` and ``silver.rule_outcomes``.

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
from common import streams  # noqa: E402
from common.errors import StreamFailedError  # noqa: E402
from common.settings import Settings, interval_seconds  # noqa: E402
from common.tables import append_idempotent, ensure_table, require_table  # noqa: E402
from silver import transforms as T  # noqa: E402
from silver.rules import rules_for  # noqa: E402

# source kind -> (bronze topic attribute, watermark attribute)
SOURCES = {"orders": ("topic_orders", "watermark_orders"),
           "logs": ("topic_logs", "watermark_logs"),
           "metrics": ("topic_metrics", "watermark_metrics")}
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


def _delay(settings: Settings, kind: str) -> str:
    return getattr(settings, SOURCES[kind][1])


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
    for kind in SOURCES:
        classified = T.classify(empty_bronze, kind, 0)
        for table, df in _outputs(settings, kind, classified, 0).items():
            ensure_table(spark, settings.table_path("silver", table), df,
                         not_null=NOT_NULL.get(table, ()), checks=_checks(table))
    ensure_table(spark, settings.table_path("silver", "rule_outcomes"),
                 spark.createDataFrame([], RULE_OUTCOMES_SCHEMA))


def _batch_writer(settings: Settings, kind: str, query: str, delay_s: float):
    def write(batch, batch_id: int) -> None:
        batch.persist()
        try:
            outcomes = T.rule_outcomes(batch, kind)
            for table, df in _outputs(settings, kind, batch, delay_s).items():
                append_idempotent(df, settings.table_path("silver", table), f"{query}:{table}", batch_id)
            rows = [(query, batch_id, t, rule, action, failed, checked) for t, rule, action, failed, checked in outcomes]
            recorded = (batch.sparkSession.createDataFrame(rows, "query string, batch_id long, table string, "
                                                                 "rule string, action string, failed long, checked long")
                        .withColumn("recorded_at", F.current_timestamp()))
            append_idempotent(recorded, settings.table_path("silver", "rule_outcomes"), f"{query}:rule_outcomes",
                              batch_id)
            failing = [(rule, failed) for _, rule, action, failed, _ in outcomes if action == "fail" and failed]
            if failing:
                raise StreamFailedError(f"rule {failing[0][0]} (action fail) broken by {failing[0][1]} rows in "
                                        f"batch {batch_id} of {query}")
        finally:
            batch.unpersist()
    return write


def start(spark, settings: Settings, options: streams.StreamOptions, kinds=tuple(SOURCES)) -> list:
    if options.sink == "delta":
        ensure_tables(spark, settings)
    specs = []
    for kind in kinds:
        topic = getattr(settings, SOURCES[kind][0])
        bronze_path = settings.table_path("bronze", settings.bronze_table_for(topic))
        require_table(spark, bronze_path, f"bronze table for {topic}", "run bronze first (`lakehouse run bronze`)")
        delay = _delay(settings, kind)
        delay_s = interval_seconds(delay)
        classified = T.classify(streams.read_delta(spark, bronze_path), kind, delay_s)
        deduped = T.dedupe(classified, kind, delay)
        name = f"silver_{kind}"
        if options.sink == "console":
            specs.append(dict(df=deduped.drop("value", "key"), name=name, checkpoint="", options=options))
            continue
        specs.append(dict(df=deduped, name=name, checkpoint=settings.checkpoint_path("silver", kind), options=options,
                          foreach_batch=_batch_writer(settings, kind, name, delay_s), stateful=True,
                          signature={"source": topic, "dedup_key": T.dedup_columns(kind), SOURCES[kind][1]: delay}))
    return streams.start_all(specs)


if __name__ == "__main__":
    from common.runner import main_for_stage

    sys.exit(main_for_stage("silver"))
