"""Silver's pure transforms on tiny DataFrames (chispa), including every quarantine reason."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from chispa import assert_df_equality

from bronze.transforms import KAFKA_SCHEMA, to_bronze
from silver import transforms as T
from silver.rules import RULES

ARRIVAL = datetime(2026, 1, 1, 12, 0, 0)
TS = "2026-01-01T12:00:00.000"


def order(**over):
    o = {"order_id": 1, "customer_id": "CUST-001", "timestamp": TS,
         "items": [{"product_id": 1, "product_name": "Laptop", "quantity": 2, "unit_price": 999.99, "subtotal": 1999.98},
                   {"product_id": 2, "product_name": "Souris", "quantity": 1, "unit_price": 29.99, "subtotal": 29.99}],
         "total": 2029.97, "status": "created"}
    o.update(over)
    return o


def _bronze(spark, values, arrival=ARRIVAL):
    rows = [(None, None if v is None else (v if isinstance(v, str) else json.dumps(v)).encode(), "t", 0, i,
             arrival, 0, []) for i, v in enumerate(values)]
    return to_bronze(spark.createDataFrame(rows, KAFKA_SCHEMA))


def _classify(spark, kind, values, arrival=ARRIVAL):
    return T.classify(_bronze(spark, values, arrival), kind, 300).orderBy("offset")


def _item(**over):
    it = {"product_id": 4, "product_name": "Ecran", "quantity": 2, "unit_price": 349.99, "subtotal": 699.98}
    it.update(over)
    return it


ORDER_CASES = [
    (order(), "valid", None),
    (None, "quarantine", "empty_value"),
    ("this is not json", "quarantine", "malformed_json"),
    (json.dumps(order())[:40], "quarantine", "malformed_json"),
    ({k: v for k, v in order().items() if k != "order_id"}, "quarantine", "missing_field:order_id"),
    ({k: v for k, v in order().items() if k != "customer_id"}, "quarantine", "missing_field:customer_id"),
    (order(total="beaucoup"), "quarantine", "wrong_type:total"),
    (order(order_id="abc"), "quarantine", "wrong_type:order_id"),
    (order(timestamp="yesterday"), "quarantine", "bad_timestamp"),
    (order(items=[_item(quantity=-2, subtotal=-699.98)], total=-699.98), "quarantine", "quantity_not_positive"),
    (order(items=[_item(quantity=0, subtotal=0.0)], total=0.0), "quarantine", "quantity_not_positive"),
    (order(items=[_item(unit_price=0.0, subtotal=0.0)], total=0.0), "quarantine", "unit_price_not_positive"),
    (order(items=[_item(subtotal=700.5)], total=700.5), "quarantine", "subtotal_mismatch"),
    (order(total=5.0), "quarantine", "total_mismatch"),
    (order(status="lost"), "quarantine", "unknown_status"),
    (order(items=[], total=0.0), "quarantine", "no_items"),
    ({k: v for k, v in order().items() if k != "items"}, "quarantine", "missing_field:items"),
    (order(items=[{k: v for k, v in _item().items() if k != "quantity"}], total=699.98), "quarantine",
     "missing_field:items.quantity"),
    (order(items=[_item(quantity="two")], total=699.98), "quarantine", "wrong_type:items.quantity"),
    (order(timestamp="2026-01-01T11:50:00.000"), "valid", None),  # 600 s before its arrival: lateness is the watermark's
    (order(timestamp="2025-03-01T08:00:00.000"), "valid", None),  # months old (a replay of history)
    (order(timestamp="2026-01-01T12:04:00.000"), "valid", None),  # 240 s ahead of Kafka: within max_ahead 300 s
    (order(timestamp="2026-01-01T12:06:00.000"), "quarantine", "event_time_in_future"),  # 360 s ahead
    (order(timestamp="2099-01-01T00:00:00.000"), "quarantine", "event_time_in_future"),
]


@pytest.mark.parametrize("value,route,reason", ORDER_CASES, ids=[f"{i}-{c[2] or c[1]}" for i, c in enumerate(ORDER_CASES)])
def test_order_routes_and_reasons(spark, value, route, reason):
    row = _classify(spark, "orders", [value]).collect()[0]
    assert (row.route, row.reason) == (route, reason)
    if route == "valid":
        assert row.order_id == 1 and row.item_count == 2 and row.event_time is not None


def test_every_quarantine_rule_has_a_case():
    covered = {c[2] for c in ORDER_CASES}
    order_rules = {r.name for r in RULES if r.table in ("orders", "order_items")}
    assert order_rules <= covered


LOG = {"timestamp": TS, "level": "INFO", "module": "auth", "message": "ok", "request_id": "r1", "user_id": "u1",
       "duration_ms": 12}
METRIC = {"timestamp": TS, "host": "server-01",
          "metrics": {"cpu_percent": 10.5, "memory_percent": 50.0, "disk_percent": 20.0, "response_time_ms": 100.0}}


@pytest.mark.parametrize("value,route,reason", [
    (LOG, "valid", None),
    ({**{k: v for k, v in LOG.items() if k != "module"}, "service": "payment"}, "valid", None),
    ({k: v for k, v in LOG.items() if k != "level"}, "quarantine", "missing_field:level"),
    ({**LOG, "duration_ms": "slow"}, "quarantine", "wrong_type:duration_ms"),
    ({**LOG, "level": "DEBUG"}, "quarantine", "unknown_level"),
    ({**LOG, "duration_ms": -5}, "quarantine", "negative_duration"),
    ({k: v for k, v in LOG.items() if k not in ("request_id", "user_id", "duration_ms")}, "valid", None),
])
def test_log_routes(spark, value, route, reason):
    row = _classify(spark, "logs", [value]).collect()[0]
    assert (row.route, row.reason) == (route, reason)


def test_service_spelling_becomes_module(spark):
    row = _classify(spark, "logs", [{**{k: v for k, v in LOG.items() if k != "module"}, "service": "payment"}]).collect()[0]
    assert row.module == "payment"


@pytest.mark.parametrize("value,route,reason", [
    (METRIC, "valid", None),
    ({k: v for k, v in METRIC.items() if k != "host"}, "quarantine", "missing_field:host"),
    ({**METRIC, "metrics": {**METRIC["metrics"], "cpu_percent": "high"}}, "quarantine", "wrong_type:cpu_percent"),
    ({**METRIC, "metrics": {**METRIC["metrics"], "cpu_percent": 150}}, "quarantine", "percent_out_of_range"),
    ({**METRIC, "metrics": {**METRIC["metrics"], "response_time_ms": -1}}, "valid", None),  # warn only
])
def test_metric_routes(spark, value, route, reason):
    row = _classify(spark, "metrics", [value]).collect()[0]
    assert (row.route, row.reason) == (route, reason)


def test_warn_rule_is_counted_not_enforced(spark):
    df = _classify(spark, "metrics", [METRIC, {**METRIC, "metrics": {**METRIC["metrics"], "response_time_ms": -1}}])
    outcomes = {rule: failed for _, rule, _, failed, _ in T.rule_outcomes(df, "metrics")}
    assert outcomes["negative_response_time"] == 1
    assert outcomes["route:valid"] == 2


def test_order_items_explode(spark):
    df = _classify(spark, "orders", [order(order_id=7)]).filter("route = 'valid'")
    got = T.to_order_items(df).select("order_id", "line", "product_id", "quantity", "subtotal")
    expected = spark.createDataFrame([(7, 1, 1, 2, 1999.98), (7, 2, 2, 1, 29.99)],
                                     "order_id int, line int, product_id int, quantity int, subtotal double")
    assert_df_equality(got, expected, ignore_nullable=True, ignore_row_order=True)


def test_dedupe_keeps_one_copy_and_all_quarantined(spark):
    values = [order(order_id=1), order(order_id=1), order(order_id=2), "bad", "bad"]
    df = T.dedupe(T.classify(_bronze(spark, values), "orders", 300), "orders", "5 minutes")
    got = df.select("route", "order_id", "offset")
    expected = spark.createDataFrame([("valid", 1), ("valid", 2), ("quarantine", None), ("quarantine", None)],
                                     "route string, order_id int")
    assert_df_equality(got.drop("offset"), expected, ignore_nullable=True, ignore_row_order=True)


def test_quarantine_keeps_raw_bytes_and_coordinates(spark):
    df = _classify(spark, "orders", ["{\"order_id\": 1, \"trunc"])
    q = T.to_quarantine(df.filter("route = 'quarantine'")).collect()[0]
    assert bytes(q.value) == b"{\"order_id\": 1, \"trunc"
    assert (q.topic, q.partition, q.offset, q.target_table, q.reason) == ("t", 0, 0, "orders", "malformed_json")


def test_late_rows_record_the_watermark_they_missed(spark):
    df = _classify(spark, "orders", [order(timestamp="2026-01-01T11:50:00.000")], arrival=ARRIVAL)
    watermark = ARRIVAL - timedelta(minutes=5)
    wm_ms = int((watermark - datetime(1970, 1, 1)).total_seconds() * 1000)
    late = T.to_late(df, wm_ms, 300, "silver dedupe").collect()[0]
    assert late.event_time == ARRIVAL - timedelta(minutes=10) and late.watermark == watermark
    assert (late.lateness_seconds, late.watermark_delay_seconds, late.arrival_lag_seconds) == (300, 300, 600)
    assert late.dropped_by == "silver dedupe" and (late.topic, late.partition, late.offset) == ("t", 0, 0)


def test_the_dedup_watermark_follows_processing_time_so_no_event_time_moves_it(spark):
    """Lateness is the silver job's (by event time); the dedup operator's watermark column is the
    batch's processing time for every row, so it never discards a record as late, and neither a
    quarantined record nor an absurd future event time (quarantined too) reaches any watermark."""
    from datetime import datetime

    df = T.dedupe(T.classify(_bronze(spark, [order(), "bad", order(timestamp="2099-01-01T00:00:00.000")]),
                             "orders", 300), "orders", "5 minutes")
    rows = df.collect()
    assert sorted(r.route for r in rows) == ["quarantine", "quarantine", "valid"]
    assert {r.reason for r in rows if r.route == "quarantine"} >= {T.FUTURE_REASON}
    (wm,) = {r.wm_time for r in rows}
    assert abs((datetime.now() - wm).total_seconds()) < 60


def test_each_source_clock_runs_behind_by_the_horizon_less_its_delay(spark):
    """Silver's three dedup operators are evicted by one watermark, the greatest of theirs: shifted
    by horizon - delay, each source's operator reaches batch time - horizon, so its keys live
    2 x its own delay (silver/job.py sets horizon = the longest delay of the sources)."""
    from datetime import datetime

    rows = T.dedupe(T.classify(_bronze(spark, [order()]), "orders", 300), "orders", "1 minute", "5 minutes").collect()
    behind = (datetime.now() - rows[0].wm_time).total_seconds()
    assert 240 <= behind < 300
    with pytest.raises(ValueError, match="shorter than the delay"):
        T.dedupe(T.classify(_bronze(spark, [order()]), "orders", 300), "orders", "5 minutes", "1 minute")


def _rescued(row) -> dict | None:
    return None if row[T.RESCUED] is None else json.loads(row[T.RESCUED])


def test_fields_the_schema_does_not_know_are_rescued_with_their_values_as_sent(spark):
    """Nothing a producer sends is lost: unknown fields, top-level or inside ``metrics``, reach the
    row's ``_rescued_data`` with their JSON types; a record without any keeps it null."""
    extra = {"region": "eu", "tags": ["a", 1], "coupon": None, "nested": {"x": 1.5}}
    rows = _classify(spark, "metrics", [METRIC, {**METRIC, **extra,
                                                  "metrics": {**METRIC["metrics"], "gpu_percent": 9.5}}]).collect()
    assert [r.route for r in rows] == ["valid", "valid"]
    assert _rescued(rows[0]) is None and rows[0].rescued_fields is None
    assert _rescued(rows[1]) == {**extra, "metrics": {"gpu_percent": 9.5}}
    assert sorted(rows[1].rescued_fields) == ["coupon", "metrics.gpu_percent", "nested", "region", "tags"]
    assert rows[1].cpu_percent == 10.5  # the known fields are parsed as before
    log = _classify(spark, "logs", [{**LOG, "trace_id": "abc"}]).collect()[0]
    assert (log.route, _rescued(log), log.rescued_fields) == ("valid", {"trace_id": "abc"}, ["trace_id"])


def test_an_items_unknown_fields_are_rescued_into_its_own_order_item(spark):
    df = _classify(spark, "orders", [order(order_id=7, channel="web", total=1399.96,
                                           items=[_item(color="red"), _item(product_id=5)])])
    row = df.collect()[0]
    assert row.route == "valid" and _rescued(row) == {"channel": "web"}
    assert sorted(row.rescued_fields) == ["channel", "items.color"]
    assert [_rescued(r) for r in T.to_table(df, "orders").collect()] == [{"channel": "web"}]
    items = T.to_order_items(df).orderBy("line").collect()
    assert [(r.product_id, _rescued(r)) for r in items] == [(4, {"color": "red"}), (5, None)]


def test_a_type_change_still_goes_to_quarantine_and_is_not_rescued(spark):
    row = _classify(spark, "orders", [order(order_id=2 ** 40)]).collect()[0]
    assert (row.route, row.reason, row[T.RESCUED]) == ("quarantine", "wrong_type:order_id", None)


@pytest.mark.parametrize("missing,checked,expected", [
    ({"missing_field:host": 3}, 3, ("host",)),                          # every record lacks it: gone
    ({"missing_field:host": 2}, 3, ()),                                 # some records only
    ({"missing_field:host": 1, "missing_field:timestamp": 2}, 3, ()),   # mixed: no single field gone
    ({}, 0, ()),
])
def test_a_field_is_gone_when_every_record_of_the_batch_lacks_it(missing, checked, expected):
    row = {"rescued": 0, "rescued_names": [], "missing_reasons": list(missing), "missing": sum(missing.values()),
           "checked": checked}
    drift = T.Drift.of(row)
    assert drift.gone == expected and bool(drift) == bool(expected)
