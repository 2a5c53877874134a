"""The generator without Kafka: determinism, payload contract, fault proportions."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone

import pytest

from common.errors import SettingsError
from devstack.generator import GenOptions, generate
from common.settings import Settings

SETTINGS = Settings.from_env({"LAKEHOUSE_LAKE_ROOT": "/tmp/lake"})
START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _records(count=2000, **kw):
    opts = GenOptions(topics=SETTINGS.source_topics, count=count, seed=kw.pop("seed", 11), start_time=START,
                      rate=100, first_order_id=1, **kw)
    return list(generate(SETTINGS, opts))


def test_same_seed_same_events_different_seed_different():
    assert _records(200) == _records(200)
    assert _records(200) != _records(200, seed=12)


def test_orders_follow_the_contract():
    for topic, rec in _records(300):
        if topic != SETTINGS.topic_orders:
            continue
        o = json.loads(rec["value"])
        assert rec["key"] == o["customer_id"] and o["customer_id"].startswith("CUST-")
        assert 1 <= len(o["items"]) <= 4
        for it in o["items"]:
            assert it["subtotal"] == round(it["quantity"] * it["unit_price"], 2)
        assert o["total"] == round(sum(it["subtotal"] for it in o["items"]), 2)
        assert o["status"] == "created"
        datetime.fromisoformat(o["timestamp"])


def test_fault_proportions():
    recs = _records(4000, duplicate_pct=10, late_pct=5, malformed_pct=5, late_by=600)
    by_topic = Counter()
    faults = Counter()
    for topic, rec in recs:
        by_topic[topic] += 1
        kind = (rec["fault"] or "ok").split(":")[0]
        faults[(topic, kind)] += 1
    n = 4000
    orders = SETTINGS.topic_orders
    assert by_topic == {t: n for t in SETTINGS.source_topics}
    assert abs(faults[(orders, "malformed")] / n - 0.05) < 0.015
    assert abs(faults[(orders, "duplicate")] / n - 0.10) < 0.02
    assert abs(faults[(orders, "late")] / n - 0.05) < 0.015
    assert faults[(SETTINGS.topic_logs, "duplicate")] == 0  # duplicates are re-sent orders only
    # every malformed kind shows up, and late records are late by exactly late_by
    kinds = {rec["fault"] for t, rec in recs if t == orders and (rec["fault"] or "").startswith("malformed")}
    assert kinds == {f"malformed:{k}" for k in
                     ("truncated_json", "not_json", "wrong_type", "missing_field", "negative_quantity")}
    for t, rec in recs:
        if rec["fault"] == "late" and t == orders:
            ev = datetime.fromisoformat(json.loads(rec["value"])["timestamp"])
            assert (datetime.fromisoformat(rec["arrival"]) - ev).total_seconds() == 600


def test_duplicates_repeat_an_earlier_valid_order():
    recs = [r for t, r in _records(1000, duplicate_pct=20) if t == SETTINGS.topic_orders]
    seen = set()
    for r in recs:
        if r["fault"] == "duplicate":
            assert r["value"] in seen
        elif r["fault"] is None:
            seen.add(r["value"])


@pytest.mark.parametrize("kw,msg", [
    ({"duplicate_pct": 101}, "--duplicate-pct must be between 0 and 100"),
    ({"late_pct": 60, "malformed_pct": 60}, "must not exceed 100"),
    ({"customers": 0}, "--customers must be between 1 and 999"),
])
def test_bad_options(kw, msg):
    with pytest.raises(SettingsError, match=msg):
        _records(1, **kw)


@pytest.mark.parametrize("argv, count, duration", [
    ([], 100, None),
    (["--duration", "30"], None, 30.0),            # --duration alone: no record limit
    (["--count", "5", "--duration", "30"], 5, 30.0),  # both: whichever ends first
])
def test_produce_count_and_duration(monkeypatch, argv, count, duration):
    import app.cli as cli
    import devstack.generator as gen

    seen = {}
    monkeypatch.setattr(cli, "get_settings", lambda: SETTINGS)
    monkeypatch.setattr(gen, "produce", lambda settings, opts: seen.setdefault("opts", opts))
    assert cli.main(["produce", "--quiet", *argv]) == 0
    assert (seen["opts"].count, seen["opts"].duration) == (count, duration)
