"""`lakehouse refresh` on the real stack: after a rule change, a refreshed silver (and the gold that
follows it) equals a fresh run of the same records with the new rule; bronze is never touched;
the versions before the refresh stay readable by time travel; a running query blocks it."""

from __future__ import annotations

import pytest

from app import dataflow
from common.ownership import Ownership, live_owner
from silver import customers
from common.errors import CheckpointError, SettingsError
from app.runner import plan_refresh, refresh, run
from common.settings import Settings
from gold.transforms import KPIS
from silver import rules
from tests.helpers import delta_count, lakehouse, produce_to, user_lines

pytestmark = pytest.mark.stack
STAGES = ("bronze", "silver", "gold")
VOLATILE = {"quarantined_at", "recorded_at", "ingest_time", "ingest_date", "batch_id", "processed_at"}


def _version(spark, settings: Settings, path: str) -> int:
    from deltalake import DeltaTable

    from common.deltars import storage_options, uri

    return DeltaTable(uri(path), storage_options=storage_options(settings, path)).version()


def _rows(spark, settings: Settings, name: str) -> list[tuple]:
    """A table's rows without the columns that say when they were written, sorted: a KPI's through
    its combine (Spark), any other as any Delta reader finds it (delta-rs: no Spark job per table)."""
    layer, table = name.split(".")
    path = settings.table_path(layer, table)
    kpi = next((k for k in KPIS if k.name == table), None) if layer == "gold" else None
    if kpi:
        df = kpi.combine(spark.read.format("delta").load(path))
        df = df.select(*[c for c in df.columns if c not in VOLATILE])
        return sorted((tuple(r) for r in df.collect()), key=repr)
    from deltalake import DeltaTable

    from common.deltars import storage_options, uri

    data = DeltaTable(uri(path), storage_options=storage_options(settings, path)).to_pyarrow_table()
    data = data.select([c for c in data.column_names if c not in VOLATILE])
    return sorted((tuple(r.values()) for r in data.to_pylist()), key=repr)


def test_refresh_silver_after_a_rule_change_equals_a_fresh_run(spark, lake, tmp_path, monkeypatch):
    customers.load(spark, lake)
    produce_to(lake, tmp_path / "ledger.jsonl", 150, seed=401, duplicate_pct=5, malformed_pct=5)
    run(STAGES, lake, "availableNow", spark=spark)
    bronze = {t: lake.table_path("bronze", lake.bronze_table_for(t)) for t in lake.source_topics}
    bronze_versions = {t: _version(spark, lake, p) for t, p in bronze.items()}
    orders = lake.table_path("silver", "orders")
    before, orders_version = delta_count(spark, orders), _version(spark, lake, orders)

    with pytest.raises(SettingsError, match="--include-bronze"):
        plan_refresh(spark, lake, "bronze")
    # a running stage blocks the refresh: its ownership, as a running gold holds it (that a running
    # stage owns it: tests/reliability test_second_copy_on_the_same_checkpoint_is_refused)
    held = Ownership(lake, ("gold",))
    held.acquire()
    try:
        assert live_owner(lake, "gold")
        with pytest.raises(CheckpointError, match=r"query gold_orders is running"):
            plan_refresh(spark, lake, "silver")
    finally:
        held.release()
    assert not live_owner(lake, "gold")

    totals = sorted(r.total for r in spark.read.format("delta").load(orders).select("total").collect())
    limit = totals[len(totals) // 2]
    monkeypatch.setattr(rules, "RULES", rules.RULES + (
        rules.Rule("big_order", "orders", f"total <= {limit}", description=f"total <= {limit}"),))
    plan = plan_refresh(spark, lake, "silver")
    assert plan.stages == ("silver", "gold") and not any(n.startswith("bronze.") for n in plan.versions)
    assert plan.topics == (lake.topic_enriched,)
    refresh(spark, plan, "t1")
    run(plan.stages, lake, "availableNow", spark=spark)

    fresh = lake.with_overrides(lake_root=f"{lake.lake_root}-fresh")  # same topics, a new lake
    customers.load(spark, fresh)
    run(STAGES, fresh, "availableNow", spark=spark)
    names = sorted({t for f in dataflow.graph(lake) if f.stage != "bronze" for t in map(str, f.tables)} - {"silver.rule_outcomes"})
    for name in names:
        assert _rows(spark, lake, name) == _rows(spark, fresh, name), name
    assert 0 < delta_count(spark, orders) < before
    big = (spark.read.format("delta").load(lake.table_path("silver", "quarantine")).where("reason = 'big_order'")
           .selectExpr("get_json_object(CAST(value AS STRING), '$.order_id')").distinct().count())
    assert big == before - delta_count(spark, orders)  # (a quarantined record is never deduplicated)
    assert {t: _version(spark, lake, p) for t, p in bronze.items()} == bronze_versions  # bronze untouched
    old = spark.read.format("delta").option("versionAsOf", orders_version).load(orders)
    assert old.count() == before  # the version before the refresh, by time travel


def test_refresh_cli_says_what_it_will_do_and_needs_confirmation(lake, capfd):
    proc = lakehouse(lake, "refresh", "gold", capfd=capfd)  # (its standard input is not a terminal)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "refresh gold: queries gold_orders, gold_kpis start again" in proc.stdout
    assert "again: its consumers see those messages twice" in proc.stdout
    assert user_lines(proc.stderr)[-1] == "error: refresh needs confirmation: run it in a terminal or add --yes"
