"""Silver end to end on the real stack: bronze -> silver, checked against the generator ledger."""

from __future__ import annotations

import pytest

from common.runner import run
from tests.helpers import delta_count, kill_hard, produce_to, run_stage_to_completion, start_stage_process, wait_until
from tests.oracle import SilverOracle

pytestmark = pytest.mark.stack
FAULTS = dict(duplicate_pct=10, late_pct=5, malformed_pct=5)


def _table(spark, settings, name):
    return spark.read.format("delta").load(settings.table_path("silver", name))


def _bronze_count(spark, settings, topic):
    return spark.read.format("delta").load(settings.table_path("bronze", settings.bronze_table_for(topic))).count()


def check_silver_against_ledger(spark, settings, ledger):
    oracle = SilverOracle(ledger, settings)
    orders = _table(spark, settings, "orders")
    order_ids = [r.order_id for r in orders.select("order_id").collect()]
    assert len(order_ids) == len(set(order_ids)), "duplicate order in silver.orders"
    assert set(order_ids) == set(oracle.valid_orders())
    for r in orders.select("order_id", "total", "customer_id").collect():
        o = oracle.valid_orders()[r.order_id]
        assert (r.total, r.customer_id) == (o["total"], o["customer_id"])
    items = {(r.order_id, r.line, r.product_id, r.quantity, round(r.subtotal, 2))
             for r in _table(spark, settings, "order_items").collect()}
    assert items == oracle.items()
    assert _table(spark, settings, "order_items").count() == len(oracle.items())

    q = {(r.topic, r.partition, r.offset): r.reason for r in _table(spark, settings, "quarantine").collect()}
    assert q == oracle.quarantine()
    late = [(r.topic, r.partition, r.offset) for r in _table(spark, settings, "late_records").collect()]
    assert len(late) == len(set(late)) and set(late) == oracle.late()

    # accounting identity, per source: bronze = silver + quarantine + duplicates dropped + late
    for kind, topic, table in (("orders", settings.topic_orders, "orders"), ("logs", settings.topic_logs, "logs"),
                               ("metrics", settings.topic_metrics, "metrics")):
        silver_n = _table(spark, settings, table).count()
        assert silver_n == oracle.valid_count(kind)
        q_n = sum(1 for c in q if c[0] == topic)
        late_n = sum(1 for c in late if c[0] == topic)
        assert _bronze_count(spark, settings, topic) == silver_n + q_n + oracle.duplicates(kind) + late_n
    # rule outcomes were recorded per batch, and they add up to what was quarantined
    outcomes = _table(spark, settings, "rule_outcomes")
    recorded = outcomes.filter("rule = 'route:quarantine'").groupBy().sum("failed").collect()[0][0]
    assert recorded == len(q)


def test_silver_matches_ledger(spark, lake, tmp_path):
    ledger = produce_to(lake, tmp_path / "ledger.jsonl", 400, seed=3, **FAULTS)
    assert any(r["fault"] == "duplicate" for r in ledger) and any(r["fault"] == "late" for r in ledger)
    run(("bronze", "silver"), lake, "availableNow", spark=spark)
    check_silver_against_ledger(spark, lake, ledger)
    # a second run with nothing new changes nothing
    run(("bronze", "silver"), lake, "availableNow", spark=spark)
    check_silver_against_ledger(spark, lake, ledger)
    # constraints from the rule declaration are on the tables
    props = {r.key for r in spark.sql(f"SHOW TBLPROPERTIES delta.`{lake.table_path('silver', 'order_items')}`").collect()}
    assert {"delta.constraints.quantity_not_positive", "delta.constraints.subtotal_mismatch"} <= props


def test_silver_sigkill_restart_keeps_identity(spark, lake, tmp_path):
    ledger_path = tmp_path / "ledger.jsonl"
    produce_to(lake, ledger_path, 300, seed=5, **FAULTS)
    run(("bronze",), lake, "availableNow", spark=spark)
    proc = start_stage_process(lake, "silver", "processingTime=1 second", tmp_path / "silver1.log")
    try:
        orders_path = lake.table_path("silver", "orders")
        wait_until(lambda: delta_count(spark, orders_path) > 0 or proc.poll() is not None, 240,
                   "silver to commit a batch")
        assert proc.poll() is None, (tmp_path / "silver1.log").read_text()[-3000:]
        produce_to(lake, ledger_path, 300, seed=6, **FAULTS)
        run(("bronze",), lake, "availableNow", spark=spark)
    finally:
        kill_hard(proc)
    ledger = produce_to(lake, ledger_path, 100, seed=8, **FAULTS)
    run(("bronze",), lake, "availableNow", spark=spark)
    run_stage_to_completion(lake, "silver", tmp_path / "silver2.log")
    check_silver_against_ledger(spark, lake, ledger)
