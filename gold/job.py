"""Gold job: two streaming queries (``app.dataflow``): ``gold_orders`` enriches silver orders
into ``gold.orders_enriched`` and ``commandes-enrichies``; ``gold_kpis`` reads the four silver
tables and feeds the six KPI tables from one micro-batch.

KPIs are final tables: ``gold/<kpi>`` holds exactly one row per window and group, written once,
when the window is complete; any Delta reader (DuckDB, Trino, delta-rs, Spark) gets the KPI from
a plain scan. A window is complete when silver's watermark of its source has passed its end
(``gold.windows``: silver tags each commit with its watermark, gold reads its own offsets to know
which silver versions it has read in full): a later record of that window is late for silver
and goes to ``silver.late_records``, so nothing can change a closed window. Until then the
window's current values are in ``gold/<kpi>_open``, which every micro-batch replaces: its rows
and the batch's partial aggregates combined (``Kpi.settle``), the closed ones appended to
``gold/<kpi>``, the rest written back. ``gold.<kpi>_live`` (a view: ``gold.<kpi>`` UNION ALL
``gold.<kpi>_open``) shows every window, the current minute too. No state in gold's checkpoint,
no MERGE: per micro-batch and KPI, one aggregation, one replace of the open windows (a few rows,
written from the driver by delta-rs: ``deltars.replace``), and an append when windows close.
Exactly once: each commit is tagged with its writer (the checkpoint's query id + table) and
batch id (``batches.BatchContext``); the closed rows are appended before ``<kpi>_open`` is
replaced, so a batch replayed after a crash between the two appends nothing twice (its closed
rows are in, tagged) and recomputes the same open rows from the same inputs.
(Until 2026-12 the KPI tables held each micro-batch's partial rows and only a Spark view combined
them: other engines read wrong KPIs. Six MERGEs per micro-batch, tried in 2026-11, took ~40 s of a
2-core machine.)

The orders query appends ``gold.orders_enriched`` (stream-static join with
``silver.customers``, read at every batch: a customer loaded with ``lakehouse customers load`` is
used from the next batch on) and publishes the enriched orders to ``commandes-enrichies``,
exactly once for ``read_committed`` consumers: after the append, one Kafka transaction per
micro-batch that also commits the batch id to a ledger (``gold.publish``).

    spark-submit app/submit.py gold [--trigger availableNow] [--sink console]
    lakehouse run gold [--trigger ...]
"""

from __future__ import annotations

import logging
import time

from pyspark.sql import functions as F
from pyspark.sql.types import StructField, StructType

from common import deltars, streams
from common.batches import BatchContext, run_parallel
from silver.customers import CUSTOMERS_SCHEMA
from common.settings import Settings
from common.streams import QuerySpec
from common.tables import NotReady, ensure_all, is_delta_table, require_table
from gold.publish import Publisher
from gold.transforms import KPIS, OPEN_SUFFIX, SOURCES, enrich_orders, enriched_payload
from gold.windows import SilverWatermarks

log = logging.getLogger("lakehouse.gold")


def _silver(spark, settings: Settings, table: str, stream: bool = False):
    """A silver table, as a stream from its snapshot: not commit by commit as silver reads bronze
    (measured: a gold on a new checkpoint over a compacted silver then read each small pre-OPTIMIZE
    file in its own micro-batch, the compaction test 153 s -> 193-228 s; gold drops nothing by
    watermark, so the order is not needed)."""
    path = settings.table_path("silver", table)
    require_table(spark, path, f"silver table {table}", "run silver first (`lakehouse run silver`)")
    return streams.read_delta(spark, settings, path) if stream else spark.read.format("delta").load(path)


def ensure_tables(spark, settings: Settings, orders, kpis, write: bool = True) -> None:
    """Create the tables of gold's two flows (``orders``, ``kpis``: their sinks, nothing else);
    ``write=False``: only check them (``tables.ensure_table``)."""
    made = {}
    for kpi in KPIS:
        empty = kpi.aggregate(_silver(spark, settings, kpi.source).limit(0), settings)
        made.update({f"gold.{name}": (empty, kpi.row_keys) for name in (kpi.name, kpi.name + OPEN_SUFFIX)})
    made["gold.orders_enriched"] = (enrich_orders(_silver(spark, settings, "orders").limit(0),
                                                  spark.createDataFrame([], CUSTOMERS_SCHEMA)),
                                    ("order_id", "customer_id"))
    paths = {**orders.sink_paths(settings), **kpis.sink_paths(settings)}
    if set(paths) != set(made):
        raise ValueError(f"gold writes {sorted(made)}, its flows declare {sorted(paths)}")
    # the open-window tables (written by delta-rs) that have every column already: nothing to do
    # (their only option, not_null, applies at creation), known from delta-rs (Delta-Spark's
    # snapshot of such a table is a Spark job: no .crc)
    replaced = {f"gold.{kpi.name}{OPEN_SUFFIX}" for kpi in KPIS}
    found = deltars.columns([paths[t] for t in replaced], settings)
    ensure_all(spark, [(paths[table], empty, {"not_null": keys}) for table, (empty, keys) in made.items()
                       if not (table in replaced and set(empty.columns) <= (found[paths[table]] or set()))],
               write=write)


class _Customers:
    """The customer dimension as each micro-batch reads it (``lakehouse customers load`` writes it,
    at any time: a customer loaded or changed is used from the next batch on). Until it is first
    loaded, every order is enriched as unknown, said once."""

    def __init__(self, settings: Settings, table):
        self.path = table.path(settings)
        self._loaded = self._told = False

    def read(self, spark):
        if not self._loaded:
            self._loaded = is_delta_table(spark, self.path)
        if self._loaded:
            return spark.read.format("delta").load(self.path)
        if not self._told:
            self._told = True
            log.warning("silver.customers is empty: every order will be enriched as unknown until "
                        "`lakehouse customers load` runs")
        return spark.createDataFrame([], CUSTOMERS_SCHEMA)


def _arrival(batch, out: list) -> None:
    """When the batch's oldest and median order reached Kafka (ms), into ``out``; a measurement,
    so a failure is logged, never the batch's."""
    try:
        out.extend(batch.agg(F.min(F.unix_millis("kafka_timestamp")),
                             F.percentile_approx(F.unix_millis("kafka_timestamp"), 0.5)).collect()[0])
    except Exception as e:  # noqa: BLE001
        log.warning("event -> gold latency not measured for this batch: %s", str(e).splitlines()[0][:200])


def _orders_writer(ctx: BatchContext, customers: _Customers):
    settings = ctx.settings
    (topic,) = ctx.flow.topics_written
    # the run's transactional producer (``gold.publish``): made at the first batch (its ids come
    # from the checkpoint's query id), closed when the run ends; none in a run that does not publish
    publisher: Publisher | None = None
    publishes = ctx.run.options is None or ctx.run.options.publish

    def write(batch, batch_id: int) -> None:
        nonlocal publisher
        spark = batch.sparkSession
        if publisher is None and publishes:
            publisher = Publisher(settings, topic, ctx.flow.name, ctx.query_id(spark))
            ctx.run.on_close(publisher.close)
        batch = batch.persist()  # read once: the enriched rows, the Kafka payload and the latency
        arrived: list = []
        payload: list = []
        try:
            # Read the dimension at every micro-batch: a customer loaded or changed since the last
            # batch is used from this batch on.
            enriched = enrich_orders(batch, customers.read(spark))
            run_parallel([
                lambda: ctx.append(enriched, "gold.orders_enriched", batch_id),
                lambda: payload.extend(enriched_payload(batch).collect()
                                       if publisher is None or publisher.pending(batch_id) else ()),
                lambda: _arrival(batch, arrived),
            ])
            # the table first, then the messages: one Kafka transaction with the batch id (``gold.publish``)
            if publisher is not None:
                publisher.publish(batch_id, [(r.key, r.value) for r in payload])
            if arrived and arrived[0] is not None:  # event -> gold: Kafka timestamp to this batch's publication
                now_ms = int(time.time() * 1000)
                ctx.count(batch_id, event_to_gold_max_ms=now_ms - int(arrived[0]),
                          event_to_gold_p50_ms=now_ms - int(arrived[1]))
        finally:
            batch.unpersist()
    return write


def _kpis_writer(ctx: BatchContext, columns: dict[str, list[str]], clock: SilverWatermarks, kpis=KPIS):
    settings = ctx.settings
    settled_by: dict[str, int | None] = {}  # KPI -> the watermark its last micro-batch of this run closed by
    still_open: dict[str, object] = {}  # KPI -> the open windows this run last wrote (from the driver's rows)

    def settle(kpi, batch, batch_id: int, closed_by_ms: int | None) -> None:
        final, open_ = f"gold.{kpi.name}", f"gold.{kpi.name}{OPEN_SUFFIX}"
        spark = batch.sparkSession
        partials = kpi.aggregate(batch.filter(batch.source == kpi.source).select(*columns[kpi.source]), settings)
        # the open windows: as this run last wrote them, kept; at a run's start, as the table holds
        # them (a few rows, read by delta-rs as they were written: Delta-Spark's snapshot and scan of
        # such a table cost Spark jobs, ~1.7 s of a batch's ~2 s on a run's start; ``read_replaced``)
        before = still_open.pop(kpi.name, None)
        if before is None:
            # its columns in the partials' order, every one nullable: a column added to an older table
            # (``ensure_table``) reads null in its old rows, as Delta-Spark's scan gave it
            before = spark.createDataFrame(ctx.read_replaced(open_).select(partials.columns),
                                           schema=StructType([StructField(f.name, f.dataType, True)
                                                              for f in partials.schema.fields]))
        if ctx.holds(spark, open_, batch_id):  # replayed: written in full (closed rows first)
            settled_by[kpi.name] = closed_by_ms
            return
        current = kpi.combine(before.unionByName(partials))
        # computed once, to the driver (a few rows per open window and group): one job, then both
        # writes and the next batch's open windows from these rows
        closed, after = kpi.settle(current.toArrow(), closed_by_ms)
        if closed.num_rows:
            ctx.append(spark.createDataFrame(closed, schema=current.schema).coalesce(1), final, batch_id)
        ctx.replace(after, open_, batch_id)
        settled_by[kpi.name] = closed_by_ms
        still_open[kpi.name] = spark.createDataFrame(after, schema=current.schema)

    def write(batch, batch_id: int) -> None:
        batch = batch.persist()
        try:
            spark = batch.sparkSession
            present = {r.source for r in batch.select("source").distinct().collect()}
            watermarks = clock.at(spark, batch_id)

            def changes(kpi) -> bool:  # rows of its source in the batch, or a watermark that may close windows
                if kpi.source in present:
                    return True
                if kpi.name in settled_by:
                    return settled_by[kpi.name] != watermarks[kpi.source]
                return watermarks[kpi.source] is not None  # a run's first batch: any watermark at all

            run_parallel([(lambda kpi=kpi: settle(kpi, batch, batch_id, watermarks[kpi.source]))
                                  for kpi in kpis if changes(kpi)])
        finally:
            batch.unpersist()
    return write


def queries(run, flows) -> list[QuerySpec]:
    """Gold's queries (``flows``: gold_orders and gold_kpis of the graph, ``app.dataflow``) in
    ``run`` (``common.run.RunContext``), for the runner to start."""
    from functools import reduce

    from common.checkpoints import check_not_orphaned

    spark, settings = run.spark, run.settings
    named = {f.name: f for f in flows}
    orders, kpis = named["gold_orders"], named["gold_kpis"]
    if run.preparing and any(src.evolution == "addNewColumns" for src in settings.sources):
        raise NotReady("a source set to addNewColumns: silver's columns are read at the start")
    if run.delta:
        # before the tables are created: on a new lake there is then nothing to look into
        for flow in (orders, kpis):
            check_not_orphaned(spark, flow.checkpoint, flow.name, flow.sink_paths(settings), "gold")
        ensure_tables(spark, settings, orders, kpis, write=not run.preparing)
    sources = {t: _silver(spark, settings, t, stream=True) for t in SOURCES}
    if not run.delta:
        return [QuerySpec(kpi.aggregate(sources[kpi.source].withWatermark("event_time", "0 seconds"), settings),
                          f"gold_{kpi.name}", "", run.options, output_mode="update") for kpi in KPIS]
    (customers,) = orders.lookups
    columns = {t: df.columns for t, df in sources.items()}  # each source's own columns, out of the union
    union = reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True),
                   [df.withColumn("source", F.lit(t)) for t, df in sources.items()])
    clock = SilverWatermarks(spark, kpis.checkpoint, {t: settings.table_path("silver", t) for t in SOURCES})
    return [QuerySpec.of(orders, sources["orders"], run.options,
                         foreach_batch=_orders_writer(BatchContext.of(run, orders), _Customers(settings, customers))),
            QuerySpec.of(kpis, union, run.options,
                         foreach_batch=_kpis_writer(BatchContext.of(run, kpis), columns, clock))]
