"""Schema drift on the real stack: a producer adds fields mid-stream; silver rescues them (the
default), makes them columns (``addNewColumns``) or stops before the batch (``fail``), as each
source's setting says; every ledger check still holds."""

from __future__ import annotations

import json

import pytest

from app import dataflow
from app.runner import run
from common.errors import StreamFailedError
from devstack.generator import read_ledger
from serving.status import format_drift, read_status
from silver.transforms import RESCUED
from tests.checks import check_pipeline
from tests.helpers import committed_rows, delta_count, kill_hard, produce_to, start_stage_process, wait_until

pytestmark = pytest.mark.stack
FAULTS = dict(duplicate_pct=5, late_pct=0, malformed_pct=5)
DRIFT = {"channel": "web", "items.color": "red", "metrics.gpu_percent": 9.5, "region": "eu-west"}


def _table(spark, lake, name):
    return spark.read.format("delta").load(lake.table_path("silver", name))


def _drifted(ledger: list[dict], topic: str, key: str) -> set[tuple]:
    """Coordinates of the ledger's well-formed records of ``topic`` whose payload has ``key``."""
    out = set()
    for r in ledger:
        if r["topic"] == topic and not (r.get("fault") or "").startswith("malformed"):
            try:
                payload = json.loads(r["value"])
            except ValueError:
                continue
            if key in payload:
                out.add((r["topic"], r["partition"], r["offset"]))
    return out


def _drift_events(lake) -> list[dict]:
    """silver's event-log rows that report drift (read as any Delta reader reads them: delta-rs)."""
    from serving.native import NativeLake

    rows = NativeLake(lake).rows("ops.pipeline_events_silver", where="schema_drift IS NOT NULL",
                                 columns="batch_id, rescued, schema_drift")
    return [{"batch": r["batch_id"], "rescued": r["rescued"], **json.loads(r["schema_drift"])} for r in rows]


def test_a_new_field_mid_stream_is_rescued_reported_and_changes_nothing_else(spark, lake, tmp_path):
    ledger_path = tmp_path / "ledger.jsonl"
    produce_to(lake, ledger_path, 120, seed=21, **FAULTS)
    run(("bronze", "silver"), lake, "availableNow", spark=spark)  # gold reads both runs' rows once: _rescued_data is a column from the start
    assert _table(spark, lake, "orders").filter(f"{RESCUED} IS NOT NULL").count() == 0
    produce_to(lake, ledger_path, 120, seed=22, extra_fields=DRIFT, **FAULTS)
    run(("bronze", "silver", "gold"), lake, "availableNow", spark=spark)
    ledger = read_ledger(ledger_path)
    check_pipeline(spark, lake, ledger)  # nothing more quarantined, gold as the oracle computes it

    orders = _table(spark, lake, "orders").collect()
    rescued = {(r.topic, r.partition, r.offset) for r in orders if r[RESCUED] is not None}
    assert rescued and rescued == {(r.topic, r.partition, r.offset) for r in orders} & _drifted(
        ledger, lake.topic_orders, "channel")
    assert {r[RESCUED] for r in orders if r[RESCUED]} == {'{"channel":"web","region":"eu-west"}'}
    items = _table(spark, lake, "order_items").filter(f"{RESCUED} IS NOT NULL").collect()
    assert items and {json.loads(r[RESCUED])["color"] for r in items} == {"red"}
    metrics = _table(spark, lake, "metrics").filter(f"{RESCUED} IS NOT NULL").collect()
    assert metrics and {r[RESCUED] for r in metrics} == {'{"channel":"web","region":"eu-west","metrics":{"gpu_percent":9.5}}'}
    for table, topic in (("logs", lake.topic_logs), ("metrics", lake.topic_metrics)):
        rows = _table(spark, lake, table).collect()
        got = {(r.topic, r.partition, r.offset) for r in rows if r[RESCUED] is not None}
        assert got and got == {(r.topic, r.partition, r.offset) for r in rows} & _drifted(ledger, topic, "region")

    events = _drift_events(lake)
    assert events, "the event log names no drift"
    named = {f for e in events for src in ("orders", "logs", "metrics") for f in e.get(src, {}).get("unknown_fields", [])}
    assert named == {"channel", "region", "items.color", "metrics.gpu_percent"}
    assert {f for e in events for f in e.get("logs", {}).get("unknown_fields", [])} == {"channel", "region"}
    total = sum(e["rescued"] for e in events)
    assert total >= len(rescued) + len(metrics)
    # lakehouse status says it too
    status = [r for r in read_status(lake, dataflow.graph(lake)) if r["query"] == "silver"]
    assert status[0]["run_rescued"] == total
    lines = format_drift(status)
    assert any("(orders, this run)" in line and "channel, items.color, region" in line for line in lines), lines


def test_add_new_columns_makes_a_column_and_gold_keeps_running_across_it_and_a_restart(spark, lake, tmp_path):
    lake = lake.with_overrides(schema_evolution_orders="addNewColumns", event_log_interval="2 seconds")
    ledger_path = tmp_path / "ledger.jsonl"
    first = produce_to(lake, ledger_path, 100, seed=31, **FAULTS)
    enriched = lake.table_path("gold", "orders_enriched")
    proc = start_stage_process(lake, "all", "processingTime=1 second", tmp_path / "run.log")
    try:
        valid = sum(1 for r in first if r["topic"] == lake.topic_orders and r.get("fault") is None)
        wait_until(lambda: proc.poll() is not None or committed_rows(lake, enriched) >= valid, 300,
                   "gold to enrich the orders sent before the new field")
        before = committed_rows(lake, enriched)
        produce_to(lake, ledger_path, 100, seed=32, extra_fields={"channel": "web"}, **FAULTS)
        ledger = read_ledger(ledger_path)
        expected = sum(1 for r in ledger if r["topic"] == lake.topic_orders and r.get("fault") is None)
        # silver adds the column while gold's stream reads the table: gold restarts and goes on
        wait_until(lambda: proc.poll() is not None or committed_rows(lake, enriched) >= expected, 300,
                   "gold to enrich the orders sent after the new field")
        wait_until(lambda: proc.poll() is not None or any(
            "channel" in e.get("orders", {}).get("new_columns", []) for e in _drift_events(lake)), 60,
            "the event log to name the column silver added")
        log = (tmp_path / "run.log").read_text()
        assert proc.poll() is None, log[-3000:]
        assert "restarting it with the table's new schema" in log
        assert "sends a field the schema does not know: channel (now a column of silver.orders" in log
    finally:
        kill_hard(proc)
    assert delta_count(spark, enriched) > before
    columns = _table(spark, lake, "orders").columns
    assert "channel" in columns
    produce_to(lake, ledger_path, 60, seed=33, extra_fields={"channel": "shop"}, **FAULTS)
    run(("bronze", "silver", "gold"), lake, "availableNow", spark=spark)  # the restart after the kill
    ledger = read_ledger(ledger_path)
    check_pipeline(spark, lake, ledger)
    orders = _table(spark, lake, "orders")
    assert orders.filter("channel IS NOT NULL").count() == len(
        {(r.topic, r.partition, r.offset) for r in orders.collect()} & _drifted(ledger, lake.topic_orders, "channel"))
    assert {r.channel for r in orders.filter("channel IS NOT NULL").collect()} == {"web", "shop"}
    assert orders.filter(f"{RESCUED} IS NOT NULL").count() == 0  # a column now, not rescued


def test_fail_stops_before_the_batch_and_resumes_there_once_the_setting_changes(spark, lake, tmp_path):
    strict = lake.with_overrides(schema_evolution_logs="fail")
    ledger_path = tmp_path / "ledger.jsonl"
    produce_to(strict, ledger_path, 80, seed=41, **FAULTS)
    run(("bronze", "silver"), strict, "availableNow", spark=spark)
    counts = {t: delta_count(spark, strict.table_path("silver", t)) for t in ("orders", "logs", "metrics", "quarantine")}
    produce_to(strict, ledger_path, 80, seed=42, extra_fields={"trace_id": "abc"}, **FAULTS)
    with pytest.raises(StreamFailedError) as err:
        run(("bronze", "silver"), strict, "availableNow", spark=spark)
    message = str(err.value)
    assert "\n" not in message
    assert f"topic {strict.topic_logs}" in message and "trace_id" in message
    assert "LAKEHOUSE_SCHEMA_EVOLUTION_LOGS=fail" in message and "LAKEHOUSE_SCHEMA_EVOLUTION_LOGS=rescue" in message
    # nothing of the batch was written, to any table
    assert {t: delta_count(spark, strict.table_path("silver", t)) for t in counts} == counts
    run(("silver", "gold"), lake, "availableNow", spark=spark)  # the setting back to rescue (bronze has read it all)
    ledger = read_ledger(ledger_path)
    check_pipeline(spark, lake, ledger)
    logs = _table(spark, lake, "logs").filter(f"{RESCUED} IS NOT NULL").collect()
    assert logs and {r[RESCUED] for r in logs} == {'{"trace_id":"abc"}'}


def test_a_field_every_record_lacks_is_reported_and_stops_a_source_set_to_fail(spark, lake, tmp_path):
    from common.clients import kafka_producer

    ledger = produce_to(lake, tmp_path / "ledger.jsonl", 40, seed=51, topics=[lake.topic_metrics])
    run(("bronze", "silver"), lake, "availableNow", spark=spark)
    producer = kafka_producer(lake, "tests-drift", acks="all")
    sample = json.loads(next(r["value"] for r in ledger if r.get("fault") is None))
    for i in range(3):  # the producer stopped sending host
        producer.send(lake.topic_metrics, json.dumps({k: v for k, v in sample.items() if k != "host"}).encode())
    producer.flush()
    producer.close()
    with pytest.raises(StreamFailedError, match=r"sent records without host \(every record of the batch lacks it\)"
                       r".*LAKEHOUSE_SCHEMA_EVOLUTION_METRICS=fail"):
        run(("bronze", "silver"), lake.with_overrides(schema_evolution_metrics="fail"), "availableNow", spark=spark)
    run(("bronze", "silver"), lake, "availableNow", spark=spark)  # rescue: quarantined, reported
    reasons = [r.reason for r in _table(spark, lake, "quarantine").collect()]
    assert reasons == ["missing_field:host"] * 3
    assert any(e.get("metrics", {}).get("gone_fields") == ["host"] for e in _drift_events(lake))
