"""The event log on the real stack: one row per micro-batch per query in ``ops.pipeline_events``,
its data-quality counts adding up to what bronze holds, kept across a restart, and ``lakehouse
status`` telling the same as the log."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from serving.native import NativeLake
from app import dataflow
from app.runner import run
from serving.status import format_status, read_status
from tests.helpers import delta_count, produce_to

pytestmark = pytest.mark.stack
QUERIES = {"bronze", "silver", "gold_orders", "gold_kpis"}


def _events(settings) -> list[dict]:
    return NativeLake(settings).rows("ops.pipeline_events", order_by="query, batch_id")


def _check_one_row_per_batch(events: list[dict]) -> dict[str, list[int]]:
    keys = Counter((e["query_id"], e["batch_id"]) for e in events)
    assert max(keys.values()) == 1, [k for k, n in keys.items() if n > 1]
    batches: dict[str, list[int]] = defaultdict(list)
    for e in events:
        batches[e["query"]].append(e["batch_id"])
    for query, ids in batches.items():  # every batch of every run, none skipped
        assert sorted(ids) == list(range(len(ids))), (query, ids)
    return batches


def test_event_log_counts_every_batch_and_survives_a_restart(spark, lake, tmp_path):
    ledger = produce_to(lake, tmp_path / "ledger.jsonl", 150, seed=21, duplicate_pct=10, malformed_pct=10)
    run(("bronze", "silver", "gold"), lake, "availableNow", spark=spark)
    first = _events(lake)
    batches = _check_one_row_per_batch(first)
    assert set(batches) == QUERIES
    assert {e["stage"] for e in first} == {"bronze", "silver", "gold"}
    assert sum(e["input_rows"] for e in first if e["query"] == "bronze") == len(ledger)

    # the silver rows' counts close the accounting: bronze = silver + quarantined + dropped + late + duplicates
    silver = [e for e in first if e["query"] == "silver"]
    kept = sum(delta_count(spark, lake.table_path("silver", t)) for t in ("orders", "logs", "metrics"))
    quarantined = sum(e["quarantined"] for e in silver)
    assert quarantined == delta_count(spark, lake.table_path("silver", "quarantine")) > 0
    assert sum(e["late"] for e in silver) == delta_count(spark, lake.table_path("silver", "late_records"))
    duplicates = sum(e["duplicates"] for e in silver)
    assert duplicates > 0
    assert len(ledger) == kept + quarantined + sum(e["dropped"] for e in silver) + sum(e["late"] for e in silver) \
        + duplicates
    assert all(e["ended_at"] >= e["started_at"] and e["duration_ms"] >= e["add_batch_ms"] for e in first)
    assert all(e["records_behind"] == 0 for e in first if e["query"] == "bronze")  # availableNow drains Kafka
    gold = [e for e in first if e["query"] == "gold_orders" and e["input_rows"]]
    assert gold and all(0 <= e["event_to_gold_p50_ms"] <= e["event_to_gold_max_ms"] < 3_600_000 for e in gold)

    # a second run appends; the first run's rows stay as they were
    more = produce_to(lake, tmp_path / "ledger.jsonl", 40, seed=22)
    run(("bronze", "silver", "gold"), lake, "availableNow", spark=spark)
    second = _events(lake)
    _check_one_row_per_batch(second)
    assert {(e["query_id"], e["batch_id"], e["input_rows"]) for e in first} <= \
        {(e["query_id"], e["batch_id"], e["input_rows"]) for e in second}
    runs = {q: {e["run_id"] for e in second if e["query"] == q} for q in QUERIES}
    assert all(len(r) == 2 for r in runs.values()), runs
    assert sum(e["input_rows"] for e in second if e["query"] == "bronze") == len(more)  # the ledger file grew

    # lakehouse status reads the log: last batch and the current run's counts, nothing running
    status = {r["query"]: r for r in read_status(lake, dataflow.graph(lake))}
    assert set(status) == QUERIES
    for q in QUERIES:
        mine = [e for e in second if e["query"] == q]
        last = max(mine, key=lambda e: (e["ended_at"], e["batch_id"]))
        assert (status[q]["batch_id"], status[q]["run_id"], status[q]["active"]) == \
            (last["batch_id"], last["run_id"], False)
    latest_silver = [e for e in second if e["run_id"] == status["silver"]["run_id"]]
    assert status["silver"]["run_duplicates"] == sum(e["duplicates"] for e in latest_silver)
    lines = format_status(list(status.values()))
    assert lines[0].split()[:3] == ["QUERY", "STAGE", "ACTIVE"] and len(lines) == 1 + len(QUERIES)


def test_the_log_view_reads_a_stage_table_from_before_an_upgrade(tmp_path):
    """A stage not run since an upgrade added columns to the log: its table lacks them, and the
    view (status, dashboard) reads them as null instead of failing."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from common.eventlog import table_path
    from common.settings import Settings

    lake = Settings(lake_root=str(tmp_path / "lake"))
    old = pa.table({"query": ["bronze"], "stage": ["bronze"], "batch_id": pa.array([0], pa.int64())})
    new = pa.table({"query": ["silver"], "stage": ["silver"], "batch_id": pa.array([0], pa.int64()),
                    "rescued": pa.array([4], pa.int64()), "schema_drift": ['{"logs": {"rescued": 4}}']})
    write_deltalake(table_path(lake, "bronze"), old)
    write_deltalake(table_path(lake, "silver"), new)
    native = NativeLake(lake)
    rows = {r["query"]: r for r in native.rows("ops.pipeline_events")}
    assert (rows["bronze"]["rescued"], rows["silver"]["rescued"]) == (None, 4)
    relation = native.relation("ops.pipeline_events")
    assert native.sql(f"SELECT sum(rescued) AS n FROM {relation}") == [{"n": 4}]


def test_the_log_compacts_its_own_tables_every_compact_every_appends_and_keeps_every_row(lake):
    """The event log's one writer (delta-rs) compacts its tables itself, between two of its appends,
    so no second writer (a Delta-Spark OPTIMIZE) ever commits beside it."""
    from deltalake import DeltaTable

    from common import deltars, eventlog

    settings = lake.with_overrides(compact_every=3, event_log_interval="1 hour")
    log = eventlog.EventLog(settings)
    progress = {"name": "bronze", "id": "q", "runId": "r", "timestamp": "2026-12-07T10:00:00.000Z",
                "durationMs": {"triggerExecution": 5, "addBatch": 3}}
    for batch in range(7):  # seven appends: compacted after the third and the sixth
        log.add("bronze", eventlog.event_row(dict(progress, batchId=batch), "bronze", {}, None, "app", 1))
        log.flush()
    log.close()
    path = eventlog.table_path(settings, "bronze")
    table = DeltaTable(deltars.uri(path), storage_options=deltars.storage_options(settings, path))
    operations = [h["operation"] for h in reversed(table.history())]
    assert operations.count("OPTIMIZE") == 2 and operations[-1] != "OPTIMIZE", operations
    assert sorted(r["batch_id"] for r in NativeLake(settings).rows("ops.pipeline_events")) == list(range(7))
    assert len(table.file_uris()) == 2  # the six compacted into one, the seventh
