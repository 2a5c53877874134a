"""Silver end to end on the real stack: bronze -> silver, checked against the generator ledger."""

from __future__ import annotations

import pytest

from common.runner import run
from tests.checks import check_silver_against_ledger
from tests.helpers import (
    delta_count,
    kill_hard,
    produce_to,
    run_stage_to_completion,
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


def test_the_writing_app_compacts_its_tables_and_readers_still_get_every_row_once(spark, lake, tmp_path):
    """LAKEHOUSE_COMPACT_EVERY: bronze read in many small batches, each table OPTIMIZEd by its
    writer every 3 commits (in the background, while silver and gold read the tables); the files
    stay fewer than the commits, and every layer still matches the ledger."""
    from tests.checks import check_pipeline

    settings = lake.with_overrides(max_offsets_per_trigger=60, max_bytes_per_trigger="1k", compact_every=3)
    # no late records: in batches this small, the partitions' interleaving, not the compaction,
    # would decide which of them are late (check_late judges them in the order they were sent)
    ledger = produce_to(settings, tmp_path / "ledger.jsonl", 200, seed=31, duplicate_pct=10, malformed_pct=5)
    run(("bronze", "silver", "gold"), settings, "availableNow", spark=spark)
    for layer, table in (("bronze", settings.source("orders").bronze_table), ("silver", "orders")):
        path = settings.table_path(layer, table)
        ops = [r.operation for r in spark.sql(f"DESCRIBE HISTORY delta.`{path}`").collect()]
        writes = ops.count("WRITE")
        assert writes >= 6 and "OPTIMIZE" in ops, (table, ops)
        files = spark.sql(f"DESCRIBE DETAIL delta.`{path}`").collect()[0].numFiles
        assert files < writes, (table, files, writes)
    check_pipeline(spark, settings, ledger)
