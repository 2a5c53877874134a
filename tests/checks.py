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


def check_late(spark, settings, ledger) -> set[tuple]:
    """The late ledger holds only records the generator sent late, each at or behind the watermark
    it records, and that watermark is one the stream had reached: at most the greatest event time
    of its source's valid records sent before it, minus the source's delay. Returns their
    coordinates (the input of ``SilverOracle``)."""
    import json
    from datetime import datetime

    from common.settings import interval_seconds
    from tests.oracle import coords

    rows = _table(spark, settings, "late_records").collect()
    late = {(r.topic, r.partition, r.offset): r for r in rows}
    assert len(late) == len(rows), "a record twice in silver.late_records"
    kind_of = {src.topic: src.kind for src in settings.sources}
    seen_max: dict[str, datetime] = {}
    for rec in ledger:
        kind = kind_of.get(rec["topic"])
        if kind is None:
            continue
        row = late.get(coords(rec))
        if row is not None:
            # a generator's late record, or a copy of an order re-sent after the watermark passed it
            assert rec["fault"] in ("late", "duplicate"), f"{coords(rec)} ({rec['fault']}) is in silver.late_records"
            assert row.event_time <= row.watermark, f"{coords(rec)}: event time after the watermark it missed"
            delay = interval_seconds(settings.source(kind).watermark)
            assert kind in seen_max and (seen_max[kind] - row.watermark).total_seconds() >= delay, \
                f"{coords(rec)}: watermark {row.watermark} was never reached by {kind}"
        if rec["fault"] in (None, "duplicate", "late"):
            ts = datetime.fromisoformat(json.loads(rec["value"])["timestamp"])
            seen_max[kind] = max(seen_max.get(kind, ts), ts)
    return set(late)


def check_silver_against_ledger(spark, settings, ledger):
    oracle = SilverOracle(ledger, settings, check_late(spark, settings, ledger))
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
    late = oracle.late()

    # accounting identity, per source: bronze = silver + quarantine + duplicates dropped + late
    for kind, topic, table in (("orders", settings.topic_orders, "orders"), ("logs", settings.topic_logs, "logs"),
                               ("metrics", settings.topic_metrics, "metrics")):
        silver_n = _table(spark, settings, table).count()
        assert silver_n == oracle.valid_count(kind), (kind, silver_n, oracle.valid_count(kind))
        q_n = sum(1 for c in q if c[0] == topic)
        late_n = sum(1 for c in late if c[0] == topic)
        assert _bronze_count(spark, settings, topic) == silver_n + q_n + oracle.duplicates(kind) + late_n
    # rule outcomes were recorded per batch, and they add up to what was quarantined
    outcomes = _table(spark, settings, "rule_outcomes")
    recorded = outcomes.filter("rule = 'route:quarantine'").groupBy().sum("failed").collect()[0][0]
    assert recorded == len(q)
    got = outcomes.filter("rule = 'route:late'").groupBy().sum("failed").collect()[0][0] or 0
    assert got == len(late), f"rule_outcomes route:late {got} != {len(late)}"


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
    oracle = GoldOracle(SilverOracle(ledger, settings, check_late(spark, settings, ledger)), settings)
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


def check_checkpoint_sources(spark, settings) -> None:
    """Every query's checkpoint holds one source per source the graph declares for it: Spark
    refuses to restart a checkpoint whose query reads a different number of sources (a second
    read of one table is a second source), so a change here would break every existing lake."""
    from common.checkpoints import _Fs
    from common.pipeline import graph

    fs = _Fs(spark)
    for flow in graph(settings):
        text = fs.read_text(f"{flow.checkpoint}/offsets/0")
        assert text is not None, f"{flow.name}: no offsets/0 in {flow.checkpoint}"
        lines = text.strip().splitlines()[2:]  # "v1", the batch metadata, then one line per source
        kafka = [s for s in flow.sources if s.startswith("kafka:")]  # one subscription to all its topics
        expected = len(flow.sources) - len(kafka) + (1 if kafka else 0)
        assert len(lines) == expected, f"{flow.name}: {len(lines)} sources in its checkpoint, graph says {expected}"
