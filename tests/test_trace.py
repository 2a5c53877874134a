"""`lakehouse trace` on the real stack: a valid order, a duplicate, a quarantined and a late record
each show the path the generator's ledger says they took; the KPI row shown for the valid order
equals a count recomputed from the ledger."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from silver import customers
from app.runner import run
from serving.trace import trace_kafka, trace_order
from tests.helpers import lakehouse_process, produce_to, user_lines

pytestmark = pytest.mark.stack
T0 = datetime(2026, 1, 18, 10, 0, tzinfo=timezone.utc)


def _steps(node: dict, out=None) -> list[dict]:
    """Every step of a trace tree, depth first."""
    out = [] if out is None else out
    out.append(node)
    for c in node.get("next", []):
        _steps(c, out)
    return out


def _event_time(rec: dict) -> datetime:
    return datetime.fromisoformat(json.loads(rec["value"])["timestamp"]).replace(tzinfo=timezone.utc)


def test_trace_follows_valid_duplicate_quarantined_and_late_records(spark, lake, tmp_path):
    customers.load(spark, lake)
    ledger_path = tmp_path / "ledger.jsonl"
    orders = (lake.topic_orders,)
    first = produce_to(lake, ledger_path, 60, seed=5, topics=orders, start_time=T0, event_spacing=2.0,
                       duplicate_pct=15, malformed_pct=10)
    run(("bronze", "silver"), lake, "availableNow", spark=spark)
    produce_to(lake, ledger_path, 10, seed=6, topics=orders, start_time=T0 + timedelta(hours=1), event_spacing=1.0)
    run(("bronze", "silver"), lake, "availableNow", spark=spark)
    ledger = produce_to(lake, ledger_path, 4, seed=7, topics=orders, start_time=T0 + timedelta(hours=1, seconds=30),
                        event_spacing=1.0, late_pct=100, late_by=1800)  # 10:30: behind 11:00:09 - 5 min
    run(("bronze", "silver", "gold"), lake, "availableNow", spark=spark)

    ids = Counter(r["order_id"] for r in ledger)
    kept = [r for r in first if r["fault"] is None and ids[r["order_id"]] == 1]
    valid = kept[len(kept) // 2]
    tree = trace_order(lake, valid["order_id"]).to_dict()
    steps = _steps(tree)
    by = {s["step"]: s for s in steps}
    assert f"{valid['topic']}[{valid['partition']}]@{valid['offset']}" in {s["step"][6:] for s in steps
                                                                          if s["step"].startswith("kafka ")}
    assert by["silver.orders"]["text"].startswith("kept: ")
    items = json.loads(valid["value"])["items"]
    assert sum(1 for s in steps if s["step"] == "silver.order_items") == len(items)
    assert by["gold.orders_enriched"]["row"]["order_id"] == valid["order_id"]
    published = [s for s in steps if s["step"].startswith(f"kafka {lake.topic_enriched}[")]
    assert len(published) == 1 and json.loads(published[0]["row"]["value"])["order_id"] == valid["order_id"]
    # the minute total shown = the ledger's valid, first-seen orders of that customer in that minute
    customer, t = json.loads(valid["value"])["customer_id"], _event_time(valid)
    minute = t.replace(second=0, microsecond=0)
    expected = {r["order_id"] for r in ledger if r["fault"] is None and json.loads(r["value"])["customer_id"] == customer
                and _event_time(r).replace(second=0, microsecond=0) == minute}
    row = by["gold.customer_minute_totals"]["row"]
    assert (row["window_start"], row["nb_commandes"]) == (minute, len(expected))
    assert sum(1 for s in steps if s["step"] == "gold.customer_order_kpis") == 2  # 2-minute windows, 1-minute slide

    duplicate = next(r for r in first if r["fault"] == "duplicate")
    steps = _steps(trace_order(lake, duplicate["order_id"]).to_dict())
    kafka = [s for s in steps if s["step"].startswith(f"kafka {lake.topic_orders}[")]
    assert len(kafka) == ids[duplicate["order_id"]] >= 2
    assert sum(1 for s in steps if s["step"] == "silver.orders") == 1
    assert sum(1 for s in steps if s["text"].startswith("duplicate: silver kept ")) == len(kafka) - 1

    bad = next(r for r in first if (r["fault"] or "").startswith("malformed:"))
    steps = _steps(trace_kafka(lake, bad["topic"], bad["partition"], bad["offset"]).to_dict())
    assert [s["text"] for s in steps if s["step"] == "silver.quarantine"][0].startswith("quarantined: ")
    assert not any(s["step"].startswith("gold.") for s in steps)

    late = next(r for r in ledger if r["fault"] == "late")
    # a process of its own (no JVM: delta-rs): what a user's shell shows, nothing else on stderr
    proc = lakehouse_process(lake, "trace", "order", str(late["order_id"]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert user_lines(proc.stderr) == [], proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"order {late['order_id']}  1 Kafka record(s)")
    assert any("silver.late_records  late: event_time 2026-01-18 10:30:" in line
               and "behind the watermark 2026-01-18 10:55:09" in line for line in lines), proc.stdout
