"""Gold job: windowed KPIs (one query each), orders enrichment, publication to Kafka.

KPI semantics: each KPI query aggregates with a watermark in ``update`` output mode; every
micro-batch MERGEs the windows it changed into ``gold.<kpi>`` keyed by (window, group). A row
shows the running value while its window is open and keeps its final value once the watermark
has passed the window's end (then nothing updates it any more). A MERGE writes absolute values,
and carries Delta's txnAppId/txnVersion, so a replayed batch changes nothing twice.

    spark-submit gold/job.py [--trigger availableNow] [--sink console]
    lakehouse run gold [--trigger ...]
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import streams  # noqa: E402
from common.customers import CUSTOMERS_SCHEMA  # noqa: E402
from common.settings import Settings  # noqa: E402
from common.tables import append_idempotent, ensure_table, is_delta_table, require_table  # noqa: E402
from gold.transforms import KPIS, Kpi, enrich_orders, enriched_payload  # noqa: E402

log = logging.getLogger("lakehouse.gold")
WINDOW_KEYS = ("window_start", "window_end")


def _silver(spark, settings: Settings, table: str, stream: bool = False):
    path = settings.table_path("silver", table)
    require_table(spark, path, f"silver table {table}", "run silver first (`lakehouse run silver`)")
    return streams.read_delta(spark, path) if stream else spark.read.format("delta").load(path)


def ensure_tables(spark, settings: Settings) -> None:
    for kpi in KPIS:
        empty = kpi.build(_silver(spark, settings, kpi.source).limit(0), settings)
        ensure_table(spark, settings.table_path("gold", kpi.name), empty, not_null=WINDOW_KEYS + kpi.keys)
    customers = settings.table_path("silver", "customers")
    if not is_delta_table(spark, customers):
        log.warning("silver.customers is empty: every order will be enriched as unknown until "
                    "`lakehouse customers load` runs")
        ensure_table(spark, customers, spark.createDataFrame([], CUSTOMERS_SCHEMA), not_null=("customer_id",))
    empty = enrich_orders(_silver(spark, settings, "orders").limit(0), spark.read.format("delta").load(customers))
    ensure_table(spark, settings.table_path("gold", "orders_enriched"), empty, not_null=("order_id", "customer_id"))


def merge_batch(batch, path: str, keys: tuple[str, ...], app_id: str, batch_id: int) -> None:
    """Upsert one micro-batch of window aggregates; a replay of ``batch_id`` is skipped by Delta."""
    from delta.tables import DeltaTable

    spark = batch.sparkSession  # the query's own session clone: these confs affect only this query
    # Materialise the batch first, whatever happens to the MERGE: when Delta skips a replayed batch
    # the upstream aggregation must still have run on every partition, or its state stores are
    # never committed and Spark fails the query (STATE_STORE_COMMIT_VALIDATION_FAILED).
    batch = batch.localCheckpoint(eager=True)
    spark.conf.set("spark.databricks.delta.write.txnAppId", app_id)
    spark.conf.set("spark.databricks.delta.write.txnVersion", str(batch_id))
    try:
        cond = " AND ".join(f"t.{k} <=> s.{k}" for k in keys)
        (DeltaTable.forPath(spark, path).alias("t").merge(batch.alias("s"), cond)
         .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
    finally:
        spark.conf.unset("spark.databricks.delta.write.txnAppId")
        spark.conf.unset("spark.databricks.delta.write.txnVersion")


def _kpi_writer(settings: Settings, kpi: Kpi, query: str):
    path = settings.table_path("gold", kpi.name)

    def write(batch, batch_id: int) -> None:
        merge_batch(batch, path, WINDOW_KEYS + kpi.keys, query, batch_id)
    return write


def _enrichment_writer(settings: Settings, query: str):
    path = settings.table_path("gold", "orders_enriched")
    customers = settings.table_path("silver", "customers")

    def write(batch, batch_id: int) -> None:
        # Read the dimension at every micro-batch: a customer loaded or changed since the last
        # batch is used from the next batch on.
        enriched = enrich_orders(batch, batch.sparkSession.read.format("delta").load(customers)).persist()
        try:
            append_idempotent(enriched, path, query, batch_id)
            unknown = enriched.filter("NOT customer_known").count()
            if unknown:
                log.info("%s batch %d: %d orders from unknown customers", query, batch_id, unknown)
        finally:
            enriched.unpersist()
    return write


def start(spark, settings: Settings, options: streams.StreamOptions) -> list:
    if options.sink == "delta":
        ensure_tables(spark, settings)
    specs = []
    for kpi in KPIS:
        source = _silver(spark, settings, kpi.source, stream=True).withWatermark(
            "event_time", getattr(settings, kpi.watermark))
        name = f"gold_{kpi.name}"
        specs.append(dict(df=kpi.build(source, settings), name=name, output_mode="update", stateful=True,
                          checkpoint=settings.checkpoint_path("gold", kpi.name), options=options,
                          foreach_batch=_kpi_writer(settings, kpi, name), signature=kpi.signature(settings)))
    orders = _silver(spark, settings, "orders", stream=True)
    specs.append(dict(df=orders, name="gold_orders_enriched", options=options,
                      checkpoint=settings.checkpoint_path("gold", "orders_enriched"),
                      foreach_batch=_enrichment_writer(settings, "gold_orders_enriched")))
    specs.append(dict(
        df=enriched_payload(_silver(spark, settings, "orders", stream=True)), name="gold_publish_enriched",
        checkpoint=settings.checkpoint_path("gold", "publish_enriched"), options=options, sink_format="kafka",
        sink_options={"kafka.bootstrap.servers": settings.kafka_bootstrap_servers, "topic": settings.topic_enriched},
        signature={"topic": settings.topic_enriched}))
    return streams.start_all(specs)


if __name__ == "__main__":
    from common.runner import main_for_stage

    sys.exit(main_for_stage("gold"))
