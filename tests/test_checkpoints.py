"""A stage started on a new checkpoint over an existing lake loses nothing and doubles nothing.

Before the fix (issue 11): bronze on a new checkpoint re-read Kafka from `earliest` and appended
every record again (600 rows for 400 offsets); silver's idempotent writes were keyed to the query
*name*, so Delta took the new checkpoint's batch 0 for a replay and skipped it (silver stayed at
the first 200 orders); every command exited 0.
"""

from __future__ import annotations

import pytest

from app import dataflow
from common.errors import CheckpointError
from app.runner import reset, run
from tests.checks import _coords, _ledger_coords, check_gold, check_late, check_silver_against_ledger
from tests.helpers import produce_to

pytestmark = pytest.mark.stack


def test_new_checkpoint_resumes_bronze_and_refuses_then_rebuilds_silver(spark, lake, tmp_path):
    ledger_path = tmp_path / "ledger.jsonl"
    produce_to(lake, ledger_path, 200, seed=301, topics=[lake.topic_orders])
    run(("bronze", "silver"), lake, "availableNow", spark=spark)
    moved = lake.with_overrides(checkpoint_root=f"{lake.lake_root}/_checkpoints_moved")
    ledger = produce_to(lake, ledger_path, 200, seed=302, topics=[lake.topic_orders])

    run(("bronze",), moved, "availableNow", spark=spark)
    got = _coords(spark, lake)  # asserts that no coordinates are there twice
    assert set(got) == set(_ledger_coords(ledger)) and len(got) == 400

    with pytest.raises(CheckpointError, match=r"silver has a new checkpoint .* silver\.\w+ already holds "
                                              r"rows .*lakehouse reset silver"):
        run(("silver",), moved, "availableNow", spark=spark)
    assert not spark.streams.active

    deleted = reset(spark, moved, "silver")
    assert dataflow.flow(moved, "silver").checkpoint in deleted
    assert lake.table_path("gold", "orders_enriched") in deleted  # what follows silver goes too
    assert not any("/bronze/" in p for p in deleted)  # bronze is never part of a later stage's reset
    run(("silver", "gold"), moved, "availableNow", spark=spark)
    late = check_late(spark, moved, ledger)
    check_silver_against_ledger(spark, moved, ledger, late)
    check_gold(spark, moved, ledger, late)


def _probe(spark, lake, *tables: str):
    """The contexts of runs of a flow that writes ``tables`` (``layer.table``), on ``lake``."""
    from common.batches import BatchContext
    from common.pipeline import Flow, Table
    from common.run import RunContext

    flow = Flow("probe", "gold", (), tuple(Table.parse(t) for t in tables), "")
    run = RunContext(spark, lake)

    def ctx(query_id: str, new_checkpoint: bool = False) -> BatchContext:
        return BatchContext(flow, run, query_id=query_id, new_checkpoint=new_checkpoint)
    return ctx


def _history(spark, path):
    return spark.sql(f"DESCRIBE HISTORY delta.`{path}`").orderBy("version").collect()


def test_a_restart_skips_the_batch_its_table_already_holds(spark, lake, monkeypatch):
    """The exactly-once rule of every foreachBatch write (batches.BatchContext): a new run of the
    same checkpoint (same query id) skips a batch the table already holds, writes the next one; a
    new checkpoint (new query id) is never taken for a replay; only a run's first write looks up."""
    path = lake.table_path("gold", "replay_probe")
    schema = "grp string, n int"
    spark.createDataFrame([("g", 1)], schema).write.format("delta").save(path)
    BatchContext = _probe(spark, lake, "gold.replay_probe")

    def append(ctx, rows, batch_id):
        ctx.append(spark.createDataFrame(rows, schema), "gold.replay_probe", batch_id)

    def table():
        return sorted((r.grp, r.n) for r in spark.read.format("delta").load(path).collect())

    run1 = BatchContext("q1")
    append(run1, [("g", 5), ("h", 1)], 7)
    append(run1, [("i", 2)], 8)
    assert table() == [("g", 1), ("g", 5), ("h", 1), ("i", 2)]
    versions = len(_history(spark, path))

    run2 = BatchContext("q1")  # a restart replays batch 8, then goes on with 9
    append(run2, [("i", 99)], 8)
    assert len(_history(spark, path)) == versions and table() == [("g", 1), ("g", 5), ("h", 1), ("i", 2)]
    append(run2, [("j", 3)], 9)
    assert table() == [("g", 1), ("g", 5), ("h", 1), ("i", 2), ("j", 3)]

    # a new checkpoint's batch 0: nothing carries its id yet, so it is written without a lookup
    append(BatchContext("q2", new_checkpoint=True), [("k", 4)], 0)
    assert ("k", 4) in table()

    tags = [r.userMetadata for r in _history(spark, path)][1:]
    assert tags == ['{"batch": 7, "writer": "probe:q1:replay_probe"}', '{"batch": 8, "writer": "probe:q1:replay_probe"}',
                    '{"batch": 9, "writer": "probe:q1:replay_probe"}', '{"batch": 0, "writer": "probe:q2:replay_probe"}']
    # Delta's txn ids only on a run's first write (their lookup costs a state reconstruction): run 2's
    # first write was the skipped replay of 8, so its batch 9 carries none; the new checkpoint's
    # run looked nothing up, so its batch 0 carries none either
    txn = (spark.read.option("pathGlobFilter", "*.json").json(f"{path}/_delta_log").where("txn IS NOT NULL")
           .select("txn.version").collect())
    assert sorted(r.version for r in txn) == [7]

    # the look-up reads commit files from the latest back, and stops at the first of another
    # checkpoint of the same query and table (checkpoints replace each other): a writer that never
    # wrote the table reads one file here, not 200
    from common.fs import Fs
    from common.tables import last_committed_batch

    reads: list[str] = []
    read_text = Fs.read_text
    monkeypatch.setattr(Fs, "read_text", lambda self, p: reads.append(p) or read_text(self, p))
    assert last_committed_batch(spark, path, "probe:q2:replay_probe") == 0 and len(reads) == 1
    assert last_committed_batch(spark, path, "probe:q3:replay_probe") == -1 and len(reads) == 2
    assert last_committed_batch(spark, path, "other:q9:replay_probe") == -1 and len(reads) == 2 + versions + 2


def test_a_batch_committed_by_an_earlier_txn_only_version_is_skipped(spark, lake):
    """Upgrade: a table whose last batch was committed with Delta's txnAppId alone (no tag)."""
    path = lake.table_path("silver", "upgrade_probe")
    BatchContext = _probe(spark, lake, "silver.upgrade_probe")
    rows = spark.createDataFrame([(1,)], "x int")
    (rows.write.format("delta").mode("append").option("txnAppId", "probe:q1:upgrade_probe")
     .option("txnVersion", "4").save(path))
    ctx = BatchContext("q1")
    ctx.append(rows, "silver.upgrade_probe", 4)  # the replay of batch 4
    assert spark.read.format("delta").load(path).count() == 1
    ctx.append(rows, "silver.upgrade_probe", 5)
    assert spark.read.format("delta").load(path).count() == 2


def test_a_crash_between_the_two_commits_of_a_kpi_batch_adds_nothing_twice_and_loses_nothing(spark, lake):
    """gold_kpis' micro-batch per KPI: the closed windows appended to gold/<kpi>, then
    gold/<kpi>_open replaced. A crash after the first commit: the restart replays the batch, skips
    the append its table holds and writes the open windows; a second replay changes nothing; a
    later watermark closes the rest. Every window ends in gold/<kpi> once, with every order."""
    from datetime import datetime

    from pyspark.sql import functions as F

    from common.tables import ensure_table
    from gold.job import _kpis_writer
    from gold.transforms import OPEN_SUFFIX, kpi_named

    kpi = kpi_named("customer_minute_totals")
    final, open_ = lake.table_path("gold", kpi.name), lake.table_path("gold", kpi.name + OPEN_SUFFIX)
    columns = ["customer_id", "event_time", "total"]
    BatchContext = _probe(spark, lake, f"gold.{kpi.name}", f"gold.{kpi.name}{OPEN_SUFFIX}")
    for path in (final, open_):
        ensure_table(spark, path, kpi.aggregate(spark.createDataFrame([], "customer_id string, event_time timestamp, "
                                                                          "total double"), lake), not_null=kpi.row_keys)

    def orders(*rows):
        return (spark.createDataFrame([(c, datetime.fromisoformat(f"2026-01-18T{t}"), v) for c, t, v in rows],
                                      ", ".join(f"{c} {t}" for c, t in zip(columns, ("string", "timestamp", "double"))))
                .withColumn("source", F.lit("orders")))

    class Clock:  # silver's watermark of orders as gold read it, per batch (epoch ms)
        marks = {0: None, 1: int(datetime.fromisoformat("2026-01-18T10:01:00+00:00").timestamp() * 1000),
                 2: int(datetime.fromisoformat("2026-01-18T10:03:00+00:00").timestamp() * 1000)}

        def at(self, spark, batch_id):
            return {"orders": self.marks[batch_id]}

    def writer(ctx):
        return _kpis_writer(ctx, {"orders": columns}, Clock(), kpis=(kpi,))

    def rows(path):
        return {(r.window_start.strftime("%H:%M"), r.customer_id): (r.nb_commandes, r.total_commandes)
                for r in spark.read.format("delta").load(path).collect()}

    batch0 = orders(("C1", "10:00:10", 10.0), ("C1", "10:00:20", 5.0), ("C2", "10:01:30", 7.0))
    batch1 = orders(("C2", "10:01:40", 1.0), ("C1", "10:02:05", 2.0))
    run1 = BatchContext("q1")
    writer(run1)(batch0, 0)
    assert rows(final) == {} and rows(open_) == {("10:00", "C1"): (2, 15.0), ("10:01", "C2"): (1, 7.0)}

    def crash_before_the_open_windows(*args, **kwargs):
        raise RuntimeError("driver killed")

    run1.replace = crash_before_the_open_windows
    with pytest.raises(RuntimeError, match="driver killed"):
        writer(run1)(batch1, 1)
    assert rows(final) == {("10:00", "C1"): (2, 15.0)}  # the first commit landed
    assert rows(open_) == {("10:00", "C1"): (2, 15.0), ("10:01", "C2"): (1, 7.0)}  # the second did not

    run2 = BatchContext("q1")  # the restart replays batch 1
    writer(run2)(batch1, 1)
    want_open = {("10:01", "C2"): (2, 8.0), ("10:02", "C1"): (1, 2.0)}
    assert rows(final) == {("10:00", "C1"): (2, 15.0)} and rows(open_) == want_open
    versions = (len(_history(spark, final)), len(_history(spark, open_)))
    writer(BatchContext("q1"))(batch1, 1)  # replayed again: nothing to do
    assert (len(_history(spark, final)), len(_history(spark, open_))) == versions and rows(open_) == want_open

    writer(run2)(orders(), 2)  # no orders, the watermark at 10:03: the last windows close
    assert rows(final) == {("10:00", "C1"): (2, 15.0), **want_open} and rows(open_) == {}
    assert spark.read.format("delta").load(final).count() == 3

    # the files of the replaced open windows (batches 0 and 1) go at the clean-up, the table reads as it was
    from common.deltars import vacuum
    batch0 = spark.read.format("delta").option("versionAsOf", 1).load(open_)  # version 1: batch 0's open windows
    assert batch0.count() == 2
    assert vacuum(open_, lake, retention_hours=0) == 2
    with pytest.raises(Exception, match="(?i)not.?found|does not exist"):
        spark.read.format("delta").option("versionAsOf", 1).load(open_).collect()
    assert rows(open_) == {} and spark.read.format("delta").load(open_).count() == 0


def test_the_ownership_record_on_s3_is_changed_only_by_conditional_writes(lake):
    """On MinIO (the lake's S3): a record created by ``If-None-Match: *`` is not created twice, a
    replace with a stale ETag is refused, and of eight processes' worth of owners started in the
    same instant exactly one wins every stage (the local compare-and-swap: tests/test_streams.py)."""
    import threading

    from common.ownership import Ownership, _record_store, read_owner

    store = _record_store(lake, "silver")
    assert store.path.startswith("s3a://") and store.read() == (None, None)
    first = store.write({"holder": "a"}, None)
    assert first and store.write({"holder": "b"}, None) is None  # create-if-absent: refused
    second = store.write({"holder": "c"}, first)
    assert second and second != first and store.write({"holder": "d"}, first) is None  # stale ETag: refused
    assert store.read() == ({"holder": "c"}, second)
    store.delete()

    for _ in range(3):
        racers = [Ownership(lake, ("bronze", "silver", "gold")) for _ in range(8)]
        won, barrier = [], threading.Barrier(len(racers))

        def race(o):
            barrier.wait()
            if o.try_acquire() is None:
                won.append(o)

        threads = [threading.Thread(target=race, args=(o,)) for o in racers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, [o.holder for o in won]
        assert {read_owner(lake, s)["holder"] for s in ("bronze", "silver", "gold")} == {won[0].holder}
        won[0].release()
        assert all(read_owner(lake, s)["released"] for s in ("bronze", "silver", "gold"))
