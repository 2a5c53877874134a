"""What every end-to-end and fault test asserts, against the generator's ledger as truth:
bronze holds every Kafka offset exactly once, silver equals the plain-Python recomputation
(no duplicate key), and every gold table equals its recomputation to the cent."""

from __future__ import annotations

import pytest

from gold.transforms import KPIS, read_kpi
from tests.oracle import GoldOracle, SilverOracle

HALF_CENT = 0.005 + 1e-9  # gold rounds to the cent; the oracle is exact


def _bronze(spark, settings, topic):
    return spark.read.format("delta").load(settings.table_path("bronze", settings.bronze_table_for(topic)))


def _coords(spark, settings):
    out = {}
    for topic in settings.source_topics:
        for r in _bronze(spark, settings, topic).select("topic", "partition", "offset", "key", "value").collect():
            k = (r.topic, r.partition, r.offset)
            assert k not in out, f"duplicate coordinates {k}"
            out[k] = (r.key, r.value)
    return out


def _ledger_coords(ledger):
    return {(r["topic"], r["partition"], r["offset"]):
            (r["key"].encode() if r["key"] is not None else None, r["value"].encode()) for r in ledger}


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


def gold_rows(spark, settings, kpi):
    df = read_kpi(spark, settings.table_path("gold", kpi.name), kpi)
    measures = list(kpi.columns)  # the notebook's columns (state columns such as sums left out)
    rows = df.selectExpr("date_format(window_start, 'yyyy-MM-dd HH:mm:ss') ws",
                         "date_format(window_end, 'yyyy-MM-dd HH:mm:ss') we", *kpi.keys, *measures).collect()
    out = {}
    for r in rows:
        key = tuple(r)[: 2 + len(kpi.keys)]
        assert key not in out, f"{kpi.name}: window/group {key} twice"
        out[key] = tuple(r)[2 + len(kpi.keys):]
    return out


def check_gold(spark, settings, ledger):
    oracle = GoldOracle(SilverOracle(ledger, settings), settings)
    for kpi in KPIS:
        got, want = gold_rows(spark, settings, kpi), getattr(oracle, kpi.name)()
        assert set(got) == set(want), f"{kpi.name}: windows differ"
        for k, expected in want.items():
            assert got[k] == pytest.approx(expected, abs=HALF_CENT), f"{kpi.name} {k}: {got[k]} != {expected}"


def check_bronze(spark, settings, ledger):
    got = _coords(spark, settings)  # asserts no coordinates twice
    assert set(got) == set(_ledger_coords(ledger)), "bronze offsets differ from the ledger"


def check_pipeline(spark, settings, ledger):
    check_bronze(spark, settings, ledger)
    check_silver_against_ledger(spark, settings, ledger)
    check_gold(spark, settings, ledger)
