"""Bronze against real Kafka and real Delta on MinIO, checked against the generator ledger."""

from __future__ import annotations

from collections import Counter

import pytest

from app.runner import run
from tests.checks import _bronze, _coords, _ledger_coords
from tests.helpers import (
    committed_rows,
    kill_hard,
    produce_to,
    start_stage_process,
    wait_until,
)

pytestmark = pytest.mark.stack


def test_bronze_exactly_once_across_runs(spark, lake, tmp_path):
    ledger_path = tmp_path / "ledger.jsonl"
    ledger = produce_to(lake, ledger_path, 300, malformed_pct=10, duplicate_pct=5, late_pct=5)
    run(("bronze",), lake, "availableNow", spark=spark)
    got = _coords(spark, lake)
    assert len(got) == 900
    assert {k: bytes(v[1]) for k, v in got.items()} == {k: v[1] for k, v in _ledger_coords(ledger).items()}
    assert {k: (bytes(v[0]) if v[0] is not None else None) for k, v in got.items()} == \
        {k: v[0] for k, v in _ledger_coords(ledger).items()}
    # malformed values are stored byte-for-byte like any other
    malformed = [r for r in ledger if (r["fault"] or "").startswith("malformed")]
    assert len(malformed) > 10
    for r in malformed:
        assert bytes(got[(r["topic"], r["partition"], r["offset"])][1]) == r["value"].encode()
    # ingestion columns present and partitioned by ingest date
    df = _bronze(spark, lake, lake.topic_orders)
    assert {"timestamp", "timestampType", "headers", "ingest_time", "ingest_date"} <= set(df.columns)
    orders = lake.table_path('bronze', lake.bronze_table_for(lake.topic_orders))
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{orders}`")
    assert detail.collect()[0].partitionColumns == ["ingest_date"]
    # per-file statistics on the Kafka coordinates only (bronze.job.STATS_COLUMNS)
    assert detail.collect()[0].properties.get("delta.dataSkippingStatsColumns") == "partition,offset"

    ledger = produce_to(lake, ledger_path, 100)
    run(("bronze",), lake, "availableNow", spark=spark)
    got = _coords(spark, lake)
    assert len(got) == 900 + 300 == len(ledger)
    assert set(got) == set(_ledger_coords(ledger))


def test_bronze_sigkill_mid_run_loses_and_repeats_nothing(spark, lake, tmp_path):
    ledger_path = tmp_path / "ledger.jsonl"
    produce_to(lake, ledger_path, 200)
    orders_path = lake.table_path("bronze", lake.bronze_table_for(lake.topic_orders))
    # started as production starts it: spark-submit app/submit.py bronze
    proc = start_stage_process(lake, "bronze", "processingTime=1 second", tmp_path / "bronze1.log", submit=True)
    try:
        wait_until(lambda: committed_rows(lake, orders_path) > 0 or proc.poll() is not None, 240,
                   "bronze to commit its first batch")
        assert proc.poll() is None, (tmp_path / "bronze1.log").read_text()[-3000:]
        produce_to(lake, ledger_path, 300)  # more data while the stream runs
    finally:
        kill_hard(proc)
    ledger = produce_to(lake, ledger_path, 100)
    run(("bronze",), lake, "availableNow", spark=spark)  # the restart, in this process
    got = _coords(spark, lake)
    expected = _ledger_coords(ledger)
    assert set(got) == set(expected)  # no offset missing, none duplicated (_coords asserts uniqueness)
    assert Counter(t for t, _, _ in got) == {t: 600 for t in lake.source_topics}
