"""Bronze job: one streaming query over every source topic, Kafka -> Delta ``bronze.<topic>``.

Each micro-batch is split by topic and appended to that topic's table (the writes run side by
side, empty ones are skipped), each tagged with the checkpoint's query id + table and the batch id
(``batches.BatchContext``: a replayed batch is skipped).
On a new checkpoint over a lake whose bronze tables already hold records (a moved or lost
checkpoint, or the upgrade from the one-query-per-topic layout), bronze resumes each Kafka
partition after the last offset its table holds instead of reading the topic again.

    spark-submit app/submit.py bronze [--trigger availableNow] [--sink console]
    lakehouse run bronze [--trigger ...]
"""

from __future__ import annotations

import json
import logging

from bronze.transforms import KAFKA_SCHEMA, PARTITION_COLUMNS, to_bronze
from common import streams
from common.batches import BatchContext, run_parallel
from common.streams import QuerySpec
from common.settings import Settings
from common.tables import ensure_all, has_data, is_delta_table, statistics_on

NOT_NULL = ("topic", "partition", "offset")
# Per-file statistics (min/max, null counts) only on the Kafka coordinates, the columns anything
# filters bronze by (`lakehouse trace kafka`, `replay`): Delta computes them in every write task,
# and on all of bronze's columns they were ~20 % of a small append's CPU (bench/README.md,
# 2026-12-07, session 39)
STATS_COLUMNS = ("partition", "offset")
log = logging.getLogger("lakehouse.bronze")


def table_paths(settings: Settings) -> dict[str, str]:
    """Source topic -> its bronze table's path."""
    return {t: settings.table_path("bronze", settings.bronze_table_for(t)) for t in settings.source_topics}


def ensure_tables(spark, settings: Settings, flow, write: bool = True) -> None:
    """Create the bronze tables (``flow``'s sinks) up front, so silver can start streaming from them
    at once (``write=False``: only check them, ``tables.ensure_table``)."""
    empty = to_bronze(spark.createDataFrame([], KAFKA_SCHEMA))
    options = {"partition_by": PARTITION_COLUMNS, "not_null": NOT_NULL, "properties": statistics_on(STATS_COLUMNS)}
    ensure_all(spark, [(path, empty, options) for path in flow.sink_paths(settings).values()], write=write)


def resume_offsets(spark, settings: Settings) -> str | None:
    """Kafka ``startingOffsets`` JSON that continues after what the bronze tables already hold, or
    None when they hold nothing. Partitions bronze has never seen start at the configured
    ``LAKEHOUSE_STARTING_OFFSETS`` (earliest: -2, latest: -1)."""
    from pyspark.sql import functions as F

    default = -1 if settings.starting_offsets == "latest" else -2
    offsets: dict[str, dict[str, int]] = {}
    for topic, path in table_paths(settings).items():
        if not has_data(spark, path):
            continue
        rows = (spark.read.format("delta").load(path).groupBy("partition")
                .agg(F.max("offset").alias("last")).collect())
        offsets[topic] = {str(r.partition): int(r.last) + 1 for r in rows}
    if not offsets:
        return None
    from common.clients import kafka_partitions

    for topic in settings.source_topics:
        parts = offsets.setdefault(topic, {})
        for p in kafka_partitions(settings, topic, role="bronze"):
            parts.setdefault(str(p), default)
    return json.dumps(offsets, sort_keys=True)


def replay(spark, settings: Settings, flow, from_time_ms: int | None = None, from_offsets: dict | None = None,
           dry_run: bool = False) -> dict[str, tuple[int, int, int]]:
    """Re-read Kafka from a point (a time, or ``{topic: {partition: offset}}``) as a batch and append
    to each bronze table the records it lacks (by partition and offset). Only records before where
    bronze's own query will read on (its last committed batch; on a new checkpoint, after the
    offsets its tables hold) are replayed: the query reads the rest itself, so nothing is written
    twice. Refuses while bronze's query (``flow``, of the graph) runs (one writing application per table). Returns
    ``{topic: (records read from Kafka, records appended, records left to bronze's query)}``."""
    from pyspark.sql import functions as F

    from common import checkpoints
    from common.clients import kafka_partitions

    from common.ownership import refuse_if_running

    refuse_if_running(settings, (flow,), "replay bronze")
    if not dry_run:
        ensure_tables(spark, settings, flow)
    resume = checkpoints.committed_end_offsets(spark, flow.checkpoint)
    if resume is None:
        resume = json.loads(resume_offsets(spark, settings) or "{}")
    out = {}
    for topic, path in table_paths(settings).items():
        if from_offsets is not None and topic not in from_offsets:
            continue
        reader = spark.read.format("kafka").options(**streams.kafka_options(settings, [topic], endingOffsets="latest"))
        if from_offsets is not None:  # Spark wants every partition: the others from their end (nothing)
            start = {str(p): -1 for p in kafka_partitions(settings, topic, role="bronze")}
            start.update({str(p): int(o) for p, o in from_offsets[topic].items()})
            reader = reader.option("startingOffsets", json.dumps({topic: start}))
        else:  # each partition from its first record at or after the time; none after it: nothing
            reader = (reader.option("startingTimestamp", str(from_time_ms))
                      .option("startingOffsetsByTimestampStrategy", "latest"))
        kafka = reader.load()
        ends = {int(p): int(o) for p, o in (resume.get(topic) or {}).items() if int(o) >= 0}
        before = F.lit(False)
        for p, end in ends.items():
            before = before | ((F.col("partition") == p) & (F.col("offset") < end))
        missing = kafka.where(before)
        if is_delta_table(spark, path):  # (a dry run on a lake without bronze: all of it is missing)
            have = spark.read.format("delta").load(path).select("partition", "offset")
            missing = missing.join(have, ["partition", "offset"], "left_anti")
        missing = to_bronze(missing).cache()
        read, left = kafka.agg(F.count(F.lit(1)), F.count(F.when(~before, 1))).first()  # one pass over Kafka
        added = missing.count()
        if added and not dry_run:
            (missing.write.format("delta").mode("append")
             .option("userMetadata", f"lakehouse replay of {topic} ({added} records)").save(path))
        missing.unpersist()
        out[topic] = (read, added, left)
    return out


def warn_if_records_gone(settings: Settings) -> None:
    """Bronze reading a topic from its start for the first time: say which partitions no longer
    begin at offset 0 - the broker deleted those records (time or size retention) before bronze
    ever read them, so no stage will see them."""
    from kafka import TopicPartition

    from common.clients import kafka_consumer

    try:
        consumer = kafka_consumer(settings, "lakehouse-bronze", role="bronze", request_timeout_ms=10000,
                                  api_version_auto_timeout_ms=5000)
        try:
            parts = [TopicPartition(t, p) for t in settings.source_topics
                     for p in sorted(consumer.partitions_for_topic(t) or ())]
            first = consumer.beginning_offsets(parts)
        finally:
            consumer.close()
    except Exception as e:  # best effort: the stream itself reports an unreachable broker
        log.debug("could not read the topics' first offsets: %s", e)
        return
    for tp, offset in sorted(first.items(), key=lambda x: (x[0].topic, x[0].partition)):
        if offset > 0:
            log.warning("bronze: %s partition %d now begins at offset %d: the broker deleted offsets 0-%d (retention) "
                        "before bronze ever read them; they will not be in the lake", tp.topic, tp.partition, offset,
                        offset - 1)


def _writer(ctx: BatchContext):
    tables = {t: f"bronze.{ctx.settings.bronze_table_for(t)}" for t in ctx.settings.source_topics}

    def write(batch, batch_id: int) -> None:
        # One task per micro-batch, so one file per table and batch holding every Kafka partition's
        # records of that batch. Silver reads bronze with a rate limit that admits whole files: with
        # one file per Kafka partition, a backfill's silver batch could hold partition 0's records
        # of a time slice and the next batch partition 1's of the same slice, all behind the
        # watermark the first advanced (measured: 37 % of a 1,000,000-order history replay went to
        # the late ledger). Live, it is also the cheaper write (a task costs ~50 ms here).
        batch = batch.coalesce(1).persist()
        try:
            present = {r.topic for r in batch.select("topic").distinct().collect()}
            run_parallel([(lambda t=t, table=table: ctx.append(batch.filter(batch.topic == t), table, batch_id))
                          for t, table in tables.items() if t in present])
        finally:
            batch.unpersist()
    return write


def queries(run, flows) -> list[QuerySpec]:
    """Bronze's query (``flows``: its one flow of the graph, ``app.dataflow``) in ``run``
    (``common.run.RunContext``), for the runner to start."""
    (flow,) = flows
    spark, settings = run.spark, run.settings
    starting = None
    if run.delta:
        ensure_tables(spark, settings, flow, write=not run.preparing)
        from common.checkpoints import is_new

        if is_new(spark, flow.checkpoint):
            starting = resume_offsets(spark, settings)
            if starting:
                log.warning("bronze: new checkpoint %s over existing bronze tables; resuming Kafka after the offsets "
                            "they hold: %s", flow.checkpoint, starting)
            elif settings.starting_offsets == "earliest":
                warn_if_records_gone(settings)
    source = streams.read_kafka(spark, settings, flow.topics_read, starting_offsets=starting)
    if not run.delta:
        return [QuerySpec.of(flow, to_bronze(source), run.options)]
    return [QuerySpec.of(flow, to_bronze(source), run.options, foreach_batch=_writer(BatchContext.of(run, flow)))]
