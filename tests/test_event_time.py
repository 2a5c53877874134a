"""Event time on the real stack: late means behind the stream's own watermark, not behind the
arrival time. A replay of history flows through like live data; a record sent behind the
watermark that earlier micro-batches reached is recorded in the late ledger, with that watermark,
and leaves the gold window it would have counted in, closed by then, as it was.

Each ``availableNow`` run below is one silver micro-batch (small inputs, one bronze commit per
topic), so the batch boundaries, and with them which records are late, are known exactly: a
record is late when its event time is at or behind its source's greatest valid event time in the
earlier micro-batches minus the delay."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from app.runner import run
from gold.transforms import kpi_named
from tests.checks import (_table, check_checkpoint_sources, check_gold, check_late, check_pipeline,
                          check_silver_against_ledger, gold_rows)
from tests.helpers import delta_count, produce_to

pytestmark = pytest.mark.stack
T0 = datetime(2026, 1, 18, 10, 0, tzinfo=timezone.utc)  # the seed notebooks' sample day, months ago


def test_a_replay_of_history_fills_silver_and_gold_with_nothing_late(spark, lake, tmp_path):
    ledger_path = tmp_path / "ledger.jsonl"
    # three rounds, three silver micro-batches, ten minutes of January event time each
    for i in range(3):
        ledger = produce_to(lake, ledger_path, 150, seed=40 + i, start_time=T0 + timedelta(minutes=10 * i),
                            event_spacing=4.0, duplicate_pct=5, malformed_pct=5)
        run(("bronze", "silver"), lake, "availableNow", spark=spark)
    run(("gold",), lake, "availableNow", spark=spark)
    assert delta_count(spark, lake.table_path("silver", "late_records")) == 0
    assert delta_count(spark, lake.table_path("silver", "orders")) > 300
    assert delta_count(spark, lake.table_path("gold", "customer_minute_totals")) > 0
    check_pipeline(spark, lake, ledger)  # bronze, silver and every gold KPI equal the ledger's recomputation
    check_checkpoint_sources(spark, lake)


def test_a_backfill_read_in_many_micro_batches_sends_nothing_late(spark, lake, tmp_path):
    """A history backlog read by bronze and silver in bounded micro-batches: each bronze batch is one
    file holding every Kafka partition's records of its slice, so silver's rate limit (whole files)
    never puts one partition's slice behind the watermark another partition's copy of the slice
    moved. With one file per partition, as before, the second and third files of each slice were
    late (37 % of a 1,000,000-order replay)."""
    settings = lake.with_overrides(max_offsets_per_trigger=300, max_bytes_per_trigger="1k")
    ledger = produce_to(settings, tmp_path / "ledger.jsonl", 900, seed=3, topics=(lake.topic_orders,),
                        start_time=T0, event_spacing=2.0)  # 30 minutes of January, 10 per bronze batch of 300
    run(("bronze", "silver"), settings, "availableNow", spark=spark)
    batches = {r.batch_id for r in _table(spark, lake, "rule_outcomes").collect() if r.table == "orders"}
    assert len(batches) >= 3  # silver really read the backlog in several micro-batches
    assert delta_count(spark, lake.table_path("silver", "late_records")) == 0
    assert delta_count(spark, lake.table_path("silver", "orders")) == len(ledger) == 900


def test_records_sent_behind_the_watermark_go_to_the_late_ledger_with_it(spark, lake, tmp_path, caplog):
    ledger_path = tmp_path / "ledger.jsonl"
    orders = (lake.topic_orders,)  # orders only: delay 5 minutes

    def send(count, start, **faults):
        return produce_to(lake, ledger_path, count, topics=orders, start_time=start, event_spacing=1.0, **faults)

    def batch():
        run(("bronze", "silver"), lake, "availableNow", spark=spark)

    send(30, T0)                                                   # batch 0: 10:00:00-10:00:29
    batch()
    send(20, T0 + timedelta(hours=1))                              # batch 1: 11:00:00-11:00:19, and five
    early = send(5, T0 + timedelta(hours=1, seconds=20), late_pct=100, late_by=1800)  # of 10:30:20-24:
    batch()                                        # judged by batch 0's 10:00:29 - 5 min: on time
    run(("gold",), lake, "availableNow", spark=spark)  # closes what ends by 11:00:19 - 5 min = 10:55:19
    closed = gold_rows(lake, "customer_minute_totals", kpi_named("customer_minute_totals"))
    assert {k[0][11:16] for k in closed} == {"10:00", "10:30"} and sum(v[0] for v in closed.values()) == 35
    behind = send(10, T0 + timedelta(hours=1, seconds=30), late_pct=100, late_by=1800)  # 10:30:30-39
    with caplog.at_level("WARNING", logger="lakehouse.silver"):
        batch()                                    # batch 2, judged by 11:00:19 - 5 min = 10:55:19: late
    assert "10 of 10 orders records (100%) were at or behind the watermark 2026-01-18T10:55:19" in caplog.text
    ledger = send(10, T0 + timedelta(hours=1, minutes=1))         # batch 3: 11:01, on time again
    batch()
    run(("gold",), lake, "availableNow", spark=spark)
    # the late records' window was closed: it is as it was, once; gold holds every on-time order
    after = gold_rows(lake, "customer_minute_totals", kpi_named("customer_minute_totals"))
    assert {k: v for k, v in after.items() if k in closed} == closed
    late = check_late(spark, lake, ledger)
    check_gold(spark, lake, ledger, late)

    def late_sent(recs):
        return {(r["topic"], r["partition"], r["offset"]) for r in recs if r["fault"] == "late"}

    assert len(late_sent(early)) == 5 and len(late_sent(behind)) == 15
    assert late == late_sent(behind) - late_sent(early)
    watermark = (T0 + timedelta(hours=1, seconds=19) - timedelta(minutes=5)).replace(tzinfo=None)
    rows = _table(spark, lake, "late_records").collect()
    assert {r.watermark for r in rows} == {watermark}
    assert all(r.dropped_by.startswith("silver") and 24 * 60 < r.lateness_seconds < 25 * 60 for r in rows)
    check_silver_against_ledger(spark, lake, ledger, late)  # everything else in silver, the counts add up
    outcomes = {(r.batch_id, r.rule): r.failed for r in _table(spark, lake, "rule_outcomes").collect()
                if r.table == "orders"}
    assert [outcomes.get((b, "route:late"), 0) for b in range(4)] == [0, 0, 10, 0]
