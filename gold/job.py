"""Gold job: two streaming queries (``common.pipeline``): ``gold_orders`` enriches silver orders
into ``gold.orders_enriched`` and ``commandes-enrichies``; ``gold_kpis`` reads the four silver
tables and feeds the six KPI tables from one micro-batch.

KPIs are incremental: every micro-batch computes its partial aggregates per (window, group) and
appends them to the KPI's Delta table (``gold.<kpi>_partials`` in the catalog); the KPI is the
view ``gold.<kpi>`` that combines them (``gold.transforms.Kpi.combine``: counts and sums add, max
takes the greatest, averages are recomputed from an exact sum and count kept beside them). A
window and group gets one partial row per micro-batch that saw it, until silver's watermark
passes it (about (window + watermark) / KPI trigger rows at most). Silver holds each valid record exactly once and has already routed records behind
its event-time watermark to the late ledger, so a KPI row counts every silver record of its
window exactly once, with no state in gold: a window stops changing once silver's watermark has
passed it. Each append is tagged with its writer (the checkpoint's query id + table) and batch id
(``streams.BatchContext``), so a replayed batch adds nothing twice. (The KPIs were MERGEd until
2026-11: six MERGEs took ~40 s of a 2-core machine per micro-batch, six appends a few seconds;
a table MERGEd then holds one row per window and group, which combines the same way.)

The orders query appends ``gold.orders_enriched`` (stream-static join with
``silver.customers``, read at every batch: a customer loaded with ``lakehouse customers load`` is
used from the next batch on) and publishes the enriched orders to ``commandes-enrichies``
(at least once: a batch replayed after a crash may publish its records again).

    spark-submit gold/job.py [--trigger availableNow] [--sink console]
    lakehouse run gold [--trigger ...]
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyspark.sql import functions as F  # noqa: E402

from common import pipeline, streams  # noqa: E402
from common.customers import CUSTOMERS_SCHEMA  # noqa: E402
from common.settings import Settings  # noqa: E402
from common.tables import ensure_table, is_delta_table, require_table  # noqa: E402
from gold.transforms import KPIS, enrich_orders, enriched_payload  # noqa: E402

log = logging.getLogger("lakehouse.gold")


def _silver(spark, settings: Settings, table: str, stream: bool = False):
    """A silver table, as a stream from its snapshot: not commit by commit as silver reads bronze
    (measured: a gold on a new checkpoint over a compacted silver then read each small pre-OPTIMIZE
    file in its own micro-batch, the compaction test 153 s -> 193-228 s; gold drops nothing by
    watermark, so the order is not needed)."""
    path = settings.table_path("silver", table)
    require_table(spark, path, f"silver table {table}", "run silver first (`lakehouse run silver`)")
    return streams.read_delta(spark, settings, path) if stream else spark.read.format("delta").load(path)


def ensure_tables(spark, settings: Settings) -> None:
    for kpi in KPIS:
        empty = kpi.aggregate(_silver(spark, settings, kpi.source).limit(0), settings)
        ensure_table(spark, settings.table_path("gold", kpi.name), empty, not_null=kpi.row_keys)
    customers = settings.table_path("silver", "customers")
    if not is_delta_table(spark, customers):
        log.warning("silver.customers is empty: every order will be enriched as unknown until "
                    "`lakehouse customers load` runs")
        ensure_table(spark, customers, spark.createDataFrame([], CUSTOMERS_SCHEMA), not_null=("customer_id",))
    empty = enrich_orders(_silver(spark, settings, "orders").limit(0), spark.read.format("delta").load(customers))
    ensure_table(spark, settings.table_path("gold", "orders_enriched"), empty, not_null=("order_id", "customer_id"))


def _arrival(batch, out: list) -> None:
    """When the batch's oldest and median order reached Kafka (ms), into ``out``; a measurement,
    so a failure is logged, never the batch's."""
    try:
        out.extend(batch.agg(F.min(F.unix_millis("kafka_timestamp")),
                             F.percentile_approx(F.unix_millis("kafka_timestamp"), 0.5)).collect()[0])
    except Exception as e:  # noqa: BLE001
        log.warning("event -> gold latency not measured for this batch: %s", str(e).splitlines()[0][:200])


def _orders_writer(settings: Settings, ctx: streams.BatchContext):
    customers = settings.table_path("silver", "customers")

    def write(batch, batch_id: int) -> None:
        spark = batch.sparkSession
        batch = batch.persist()  # read once: the enriched rows, the Kafka payload and the latency
        arrived: list = []
        try:
            # Read the dimension at every micro-batch: a customer loaded or changed since the last
            # batch is used from this batch on.
            enriched = enrich_orders(batch, spark.read.format("delta").load(customers))
            streams.run_parallel([
                lambda: ctx.append(enriched, "orders_enriched", settings.table_path("gold", "orders_enriched"),
                                   batch_id),
                lambda: (enriched_payload(batch).write.format("kafka")
                         .options(**streams.kafka_options(settings, topic=settings.topic_enriched)).save()),
                lambda: _arrival(batch, arrived),
            ])
            if arrived and arrived[0] is not None:  # event -> gold: Kafka timestamp to this batch's commit
                now_ms = int(time.time() * 1000)
                streams.count_batch(ctx.query_id(spark), batch_id, event_to_gold_max_ms=now_ms - int(arrived[0]),
                                    event_to_gold_p50_ms=now_ms - int(arrived[1]))
        finally:
            batch.unpersist()
    return write


def _kpis_writer(settings: Settings, ctx: streams.BatchContext, columns: dict[str, list[str]]):
    def write(batch, batch_id: int) -> None:
        batch = batch.persist()
        try:
            present = {r.source for r in batch.select("source").distinct().collect()}
            streams.run_parallel([
                (lambda kpi=kpi: ctx.append(
                    kpi.aggregate(batch.filter(batch.source == kpi.source).select(*columns[kpi.source]), settings),
                    kpi.name, settings.table_path("gold", kpi.name), batch_id))
                for kpi in KPIS if kpi.source in present])
        finally:
            batch.unpersist()
    return write


def start(spark, settings: Settings, options: streams.StreamOptions) -> list:
    from functools import reduce

    from common.checkpoints import check_not_orphaned
    from pyspark.sql import functions as F

    orders, kpis = pipeline.flow(settings, "gold_orders"), pipeline.flow(settings, "gold_kpis")
    if options.sink == "delta":
        # before the tables are created: on a new lake there is then nothing to look into
        for flow in (orders, kpis):
            check_not_orphaned(spark, flow.checkpoint, flow.name, pipeline.sink_paths(settings, flow), "gold")
        ensure_tables(spark, settings)
    sources = {t: _silver(spark, settings, t, stream=True) for t in pipeline.GOLD_SOURCES}
    if options.sink == "console":
        specs = [dict(df=kpi.aggregate(sources[kpi.source].withWatermark("event_time", "0 seconds"), settings),
                      name=f"gold_{kpi.name}", checkpoint="", options=options, output_mode="update") for kpi in KPIS]
        return streams.start_all(specs)
    columns = {t: df.columns for t, df in sources.items()}  # each source's own columns, out of the union
    union = reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True),
                   [df.withColumn("source", F.lit(t)) for t, df in sources.items()])
    return streams.start_all([
        streams.flow_spec(orders, sources["orders"], options,
                          foreach_batch=_orders_writer(settings, streams.BatchContext.of(spark, orders, settings))),
        streams.flow_spec(kpis, union, options,
                          foreach_batch=_kpis_writer(settings, streams.BatchContext.of(spark, kpis, settings), columns))])


if __name__ == "__main__":
    from common.runner import main_for_stage

    sys.exit(main_for_stage("gold"))
