"""The benchmark's peer: a hand-written minimal three-query chain, frozen as the yardstick.

    python -m bench.peer        # runs until SIGTERM; settings from LAKEHOUSE_* like the project

Kafka (orders) -> bronze Delta -> from_json + dropDuplicatesWithinWatermark -> silver Delta ->
stream-static join with the customers -> gold Delta, all on the lake's storage with its own
checkpoints under ``<ops zone root>/_peer``. Tuned as the issue describes it: trigger ``0 seconds``,
``snapshotPartitions`` 1, no watermark-only micro-batches, ``checkpointInterval`` 100. It does
none of the project's work beyond that (no quarantine, late ledger, rules, KPIs, publication,
guards): the gap between the two is the price of those.
"""

from __future__ import annotations

import signal
import threading

from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, IntegerType, StringType, StructField, StructType

from common.settings import OPS

ORDER = StructType([
    StructField("order_id", IntegerType()), StructField("customer_id", StringType()),
    StructField("timestamp", StringType()), StructField("total", DoubleType()), StructField("status", StringType()),
    StructField("items", ArrayType(StructType([StructField("product_id", IntegerType()),
                                               StructField("quantity", IntegerType())]))),
])
CONF = {"spark.databricks.delta.snapshotPartitions": "1",
        "spark.sql.streaming.noDataMicroBatches.enabled": "false",
        "spark.databricks.delta.properties.defaults.checkpointInterval": "100",
        "spark.databricks.delta.properties.defaults.autoOptimize.optimizeWrite": "false",
        "spark.databricks.delta.properties.defaults.autoOptimize.autoCompact": "false"}


def paths(settings) -> dict[str, str]:
    root = f"{settings.zone_root(OPS)}/_peer"  # (the ops zone: a bucket the benchmark's admin key writes)
    return {t: f"{root}/{t}" for t in ("bronze", "silver", "gold", "_ck_bronze", "_ck_silver", "_ck_gold")}


def main() -> int:
    from common.settings import get_settings
    from common.spark import get_spark
    from common.streams import kafka_options

    settings = get_settings()
    spark = get_spark(settings, app_name="bench-peer")
    for k, v in CONF.items():
        spark.conf.set(k, v)
    p = paths(settings)
    customers = spark.read.format("delta").load(settings.table_path("silver", "customers"))
    trigger = {"processingTime": "0 seconds"}

    kafka = (spark.readStream.format("kafka").options(**kafka_options(settings))
             .option("subscribe", settings.topic_orders).option("startingOffsets", "earliest").load())
    bronze = (kafka.select("key", "value", "topic", "partition", "offset", "timestamp")
              .writeStream.format("delta").option("checkpointLocation", p["_ck_bronze"]).trigger(**trigger)
              .start(p["bronze"]))
    _wait_for_table(spark, p["bronze"])
    silver = (spark.readStream.format("delta").load(p["bronze"])
              .select(F.from_json(F.col("value").cast("string"), ORDER).alias("o"),
                      F.col("timestamp").alias("kafka_timestamp"))
              .select("o.order_id", "o.customer_id", F.to_timestamp("o.timestamp").alias("event_time"), "o.total",
                      "kafka_timestamp")
              .where("order_id IS NOT NULL AND event_time IS NOT NULL")
              .withWatermark("event_time", settings.watermark_orders)
              .dropDuplicatesWithinWatermark(["order_id"])
              .writeStream.format("delta").option("checkpointLocation", p["_ck_silver"]).trigger(**trigger)
              .start(p["silver"]))
    _wait_for_table(spark, p["silver"])
    gold = (spark.readStream.format("delta").load(p["silver"])
            .join(customers.select("customer_id", "nom", "ville", "segment"), "customer_id", "left")
            .writeStream.format("delta").option("checkpointLocation", p["_ck_gold"]).trigger(**trigger)
            .start(p["gold"]))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    queries = (bronze, silver, gold)
    while not stop.wait(0.5):
        if any(q.exception() is not None for q in queries if not q.isActive):
            break
    for q in queries:
        q.stop()
    return 0


def _wait_for_table(spark, path: str) -> None:
    """A Delta stream can only start on a table that exists: the upstream query creates it with its
    first commit."""
    from delta.tables import DeltaTable

    from devstack.stack import wait_until

    wait_until(lambda: DeltaTable.isDeltaTable(spark, path), 300, f"peer table {path}", interval=0.5)


if __name__ == "__main__":
    raise SystemExit(main())
