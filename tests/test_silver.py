"""Silver end to end on the real stack: bronze -> silver, checked against the generator ledger."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from app import dataflow
from app.runner import run
from tests.checks import check_silver_against_ledger
from tests.helpers import (
    committed_rows,
    delta_count,
    kill_hard,
    produce_to,
    start_stage_process,
    wait_until,
)

pytestmark = pytest.mark.stack
FAULTS = dict(duplicate_pct=10, late_pct=5, malformed_pct=5)


def test_silver_matches_ledger(spark, lake, tmp_path):
    ledger = produce_to(lake, tmp_path / "ledger.jsonl", 400, seed=3, **FAULTS)
    assert any(r["fault"] == "duplicate" for r in ledger) and any(r["fault"] == "late" for r in ledger)
    run(("bronze", "silver"), lake, "availableNow", spark=spark)
    check_silver_against_ledger(spark, lake, ledger)
    # a second run with nothing new changes nothing
    run(("bronze", "silver"), lake, "availableNow", spark=spark)
    check_silver_against_ledger(spark, lake, ledger)
    # the tables were made from the schemas silver's start keeps (silver.job.table_schemas, built once
    # a process): each has what the batch's transforms wrote into it, column for column
    from silver.job import table_schemas

    for table, schema in table_schemas(spark).items():
        written = spark.read.format("delta").load(lake.table_path("silver", table)).schema
        assert [(f.name, f.dataType) for f in written] == [(f.name, f.dataType) for f in schema], table
    # constraints from the rule declaration are on the tables
    props = {r.key: r.value for r in
             spark.sql(f"SHOW TBLPROPERTIES delta.`{lake.table_path('silver', 'order_items')}`").collect()}
    assert {"delta.constraints.quantity_not_positive", "delta.constraints.subtotal_mismatch"} <= set(props)
    # per-file statistics on the columns readers filter by (silver.job.STATS_COLUMNS)
    assert props["delta.dataSkippingStatsColumns"] == "order_id,customer_id,event_time,product_id,partition,offset"
    # ... and enforced: a row breaking one is refused, the table unchanged
    from pyspark.sql import functions as F

    items = lake.table_path("silver", "order_items")
    before = delta_count(spark, items)
    bad = (spark.read.format("delta").load(items).limit(1)
           .withColumn("quantity", F.col("quantity") * 0).withColumn("subtotal", F.col("subtotal") * 0))
    with pytest.raises(Exception, match="CHECK constraint quantity_not_positive"):
        bad.write.format("delta").mode("append").save(items)
    assert delta_count(spark, items) == before


def test_silver_sigkill_restart_keeps_identity(spark, lake, tmp_path):
    ledger_path = tmp_path / "ledger.jsonl"
    produce_to(lake, ledger_path, 300, seed=5, **FAULTS)
    run(("bronze",), lake, "availableNow", spark=spark)
    proc = start_stage_process(lake, "silver", "processingTime=1 second", tmp_path / "silver1.log")
    try:
        orders_path = lake.table_path("silver", "orders")
        wait_until(lambda: committed_rows(lake, orders_path) > 0 or proc.poll() is not None, 240,
                   "silver to commit a batch")
        assert proc.poll() is None, (tmp_path / "silver1.log").read_text()[-3000:]
        produce_to(lake, ledger_path, 300, seed=6, **FAULTS)
        run(("bronze",), lake, "availableNow", spark=spark)
    finally:
        kill_hard(proc)
    ledger = produce_to(lake, ledger_path, 100, seed=8, **FAULTS)
    run(("bronze",), lake, "availableNow", spark=spark)
    run(("silver",), lake, "availableNow", spark=spark)  # the restart, in this process
    check_silver_against_ledger(spark, lake, ledger)


def test_the_writing_app_compacts_its_tables_and_readers_still_get_every_row_once(spark, lake, tmp_path):
    """LAKEHOUSE_COMPACT_EVERY: bronze read in many small batches, each table OPTIMIZEd by its
    writer every 3 commits (in the background, while silver and gold read the tables); the files
    stay fewer than the commits, and every layer still matches the ledger."""
    from tests.checks import check_pipeline

    settings = lake.with_overrides(max_offsets_per_trigger=60, max_bytes_per_trigger="1k", compact_every=3)
    # no late records: in batches this small, the partitions' interleaving, not the compaction,
    # would decide which of them are late (check_late judges them in the order they were sent)
    # 150 records a topic: bronze's 450 in eight batches of ~60 (each table >= 6 writes, two compactions)
    ledger = produce_to(settings, tmp_path / "ledger.jsonl", 150, seed=31, duplicate_pct=10, malformed_pct=5)
    run(("bronze", "silver", "gold"), settings, "availableNow", spark=spark)
    for layer, table in (("bronze", settings.source("orders").bronze_table), ("silver", "orders")):
        path = settings.table_path(layer, table)
        ops = [r.operation for r in spark.sql(f"DESCRIBE HISTORY delta.`{path}`").collect()]
        writes = ops.count("WRITE")
        assert writes >= 6 and "OPTIMIZE" in ops, (table, ops)
        files = spark.sql(f"DESCRIBE DETAIL delta.`{path}`").collect()[0].numFiles
        assert files < writes, (table, files, writes)
    check_pipeline(spark, settings, ledger)


def _batch_time(spark, settings, batch: int) -> float:
    """The processing time (epoch s) silver's micro-batch ``batch`` ran at, from its offset log."""
    from common.fs import Fs

    text = Fs(spark).read_text(f"{dataflow.flow(settings, 'silver').checkpoint}/offsets/{batch}")
    return json.loads(text.splitlines()[1])["batchTimestampMs"] / 1000


def test_a_copy_on_time_by_event_time_is_dropped_though_a_shorter_delay_moved_the_dedup_watermark(
        spark, lake, tmp_path):
    """Silver's three dedup operators are evicted by one watermark, the greatest of theirs. With
    each at its own delay, the shortest (metrics, 1 s here) set it, and an order's key went after
    50 + 1 s of processing: a copy sent later, still on time by event time (the orders' watermark
    had not moved), landed in silver.orders twice (the hour-long soak found 11). Each key now
    lives 2 x its source's delay (``silver.transforms.dedupe``). (The orders' delay is 30 s, not
    the default 5 minutes, so that the test waits 35 s of processing time; it was 55, 60 and 75 s before.)"""
    from common.clients import kafka_producer

    settings = lake.with_overrides(watermark_orders="30 seconds", watermark_logs="1 second",
                                   watermark_metrics="1 second")
    ledger_path = tmp_path / "ledger.jsonl"
    start = datetime(2026, 1, 18, 10, 0, tzinfo=timezone.utc)
    produce_to(settings, ledger_path, 20, seed=5, start_time=start, event_spacing=1.0)
    run(("bronze", "silver"), settings, "availableNow", spark=spark)     # silver batch 0: the orders' keys
    t0 = _batch_time(spark, settings, 0)
    produce_to(settings, ledger_path, 5, seed=6, topics=(settings.topic_logs, settings.topic_metrics),
               start_time=start + timedelta(seconds=30), event_spacing=1.0)  # after batch 0's: none late
    run(("bronze",), settings, "availableNow", spark=spark)
    wait_until(lambda: time.time() > t0 + 35, 120, "35 s of processing time after silver's first batch")
    run(("silver",), settings, "availableNow", spark=spark)              # batch 1: logs and metrics
    gap = _batch_time(spark, settings, 1) - t0
    assert 31 < gap < 60, gap  # past 30 + 1 s (the keys' old lifetime), within 2 x 30 s (the new one)
    ledger = produce_to(settings, ledger_path, 5, seed=7, topics=(settings.topic_logs,),
                        start_time=start + timedelta(seconds=40), event_spacing=1.0)
    run(("bronze", "silver"), settings, "availableNow", spark=spark)     # batch 2 evicts by batch 1's watermark
    # batch 3: a copy of the last order (the greatest event time: on time by the orders' watermark)
    last = max((r for r in ledger if r["topic"] == settings.topic_orders), key=lambda r: r["arrival"])
    producer = kafka_producer(settings, "tests-copy", acks="all")
    try:
        md = producer.send(settings.topic_orders, key=last["key"].encode() if last["key"] else None,
                           value=last["value"].encode()).get(timeout=60)
    finally:
        producer.close(timeout=10)
    copy = {**last, "fault": "duplicate", "partition": md.partition, "offset": md.offset}
    with ledger_path.open("a") as f:
        f.write(json.dumps(copy) + "\n")
    ledger.append(copy)
    run(("bronze", "silver"), settings, "availableNow", spark=spark)
    assert delta_count(spark, settings.table_path("silver", "late_records")) == 0
    check_silver_against_ledger(spark, settings, ledger)  # the copy dropped: each order once, counts add up


def test_a_checkpoint_from_before_the_shifted_clocks_loses_no_record_to_its_watermark(
        spark, lake, tmp_path, monkeypatch):
    """A silver checkpoint written before each source's dedup clock was shifted restores a
    watermark of batch time - 1 minute (the metrics' delay); the shifted logs and metrics clocks
    (3 and 4 minutes behind) would be behind it, and Spark drops such rows unseen. The clocks are
    held above the restored watermark (``silver.transforms.dedupe``): every record still lands."""
    from common.checkpoints import restored_watermark_ms
    from silver import transforms

    unshifted = transforms.dedupe
    monkeypatch.setattr(transforms, "dedupe", lambda classified, kind, delay, *_: unshifted(classified, kind, delay))
    ledger_path = tmp_path / "ledger.jsonl"
    start = datetime(2026, 1, 18, 10, 0, tzinfo=timezone.utc)
    for i in range(2):  # the code before the shift: two batches, the second's commit holds a watermark
        produce_to(lake, ledger_path, 10, seed=70 + i, start_time=start + timedelta(minutes=i), event_spacing=1.0)
        run(("bronze", "silver"), lake, "availableNow", spark=spark)
    restored = restored_watermark_ms(spark, dataflow.flow(lake, "silver").checkpoint)
    assert time.time() - 120 < restored / 1000 < time.time() - 60  # the last batch's time - 1 minute
    monkeypatch.undo()  # this code, on that checkpoint
    ledger = produce_to(lake, ledger_path, 10, seed=72, start_time=start + timedelta(minutes=2), event_spacing=1.0)
    run(("bronze", "silver"), lake, "availableNow", spark=spark)
    assert delta_count(spark, lake.table_path("silver", "late_records")) == 0
    check_silver_against_ledger(spark, lake, ledger)  # every record in silver, none dropped unseen
