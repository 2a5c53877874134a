"""Stream lifecycle without the stack: one failing query stops the others; checkpoint guards."""

from __future__ import annotations

import json

import pytest

from common import checkpoints, streams
from common.errors import CheckpointError, StreamFailedError


def test_one_failed_query_stops_every_other_and_raises_its_error(spark):
    source = spark.readStream.format("rate").option("rowsPerSecond", "5").load()

    def fail_on_second_batch(batch, batch_id):
        if batch_id >= 1:
            raise ValueError("boom in the second batch")

    healthy = source.writeStream.queryName("healthy").format("noop").trigger(processingTime="200 milliseconds").start()
    failing = (source.writeStream.queryName("failing").foreachBatch(fail_on_second_batch)
               .trigger(processingTime="200 milliseconds").start())
    with pytest.raises(StreamFailedError, match=r"query failing failed: .*boom in the second batch") as err:
        streams.await_all(spark, [healthy, failing])
    assert err.value.exit_code != 0
    assert not healthy.isActive and not failing.isActive
    assert healthy.exception() is None  # stopped by us, not failed


def test_the_latency_path_takes_free_task_slots_before_the_kpis_and_the_compactor(spark):
    """common/fairscheduler.xml names a pool for every query of the graph (a renamed query would
    silently lose its place) and the compactor's: bronze, silver and gold_orders below their
    minShare are served first, gold_kpis and the compactor on what they leave."""
    from app import dataflow
    from common.settings import Settings

    sc = spark.sparkContext._jsc.sc()
    slots = spark.sparkContext.defaultParallelism

    def pool(name):
        found = sc.getPoolForName(name)
        assert found.isDefined(), f"no scheduler pool for {name} in common/fairscheduler.xml"
        return found.get()

    flows = [f.name for stage in ("bronze", "silver", "gold") for f in dataflow.flows(Settings.from_env(), stage)]
    assert flows == ["bronze", "silver", "gold_orders", "gold_kpis"]
    for name in ("bronze", "silver", "gold_orders"):
        assert pool(name).minShare() >= slots and pool(name).weight() > pool("gold_kpis").weight()
    for name in ("gold_kpis", "compaction"):
        assert pool(name).minShare() == 0


def test_signature_is_recorded_then_enforced(spark, tmp_path):
    cp = str(tmp_path / "cp")
    checkpoints.check_signature(spark, f"file://{cp}", "q", {"window": "2 minutes", "keys": ("a",)})
    checkpoints.check_signature(spark, f"file://{cp}", "q", {"window": "2 minutes", "keys": ("a",)})
    with pytest.raises(CheckpointError, match=r"query q cannot restart .*window was '2 minutes', now '3 minutes'"):
        checkpoints.check_signature(spark, f"file://{cp}", "q", {"window": "3 minutes", "keys": ("a",)})


def test_ownership_is_exclusive_taken_from_the_dead_at_once_and_from_the_silent_after_its_expiry(tmp_path):
    """``common.ownership`` on a local lake (the compare-and-swap under flock; the S3 one:
    tests/test_checkpoints.py): one owner per stage, all of a run's stages or none, a dead process's
    stage taken at once, another host's only after its expiry, a fenced owner once another took over."""
    import json
    import socket
    import threading
    import time

    from common.errors import CheckpointError
    from common.ownership import Ownership, OwnershipLost, read_owner
    from common.settings import Settings

    s = Settings.from_env({"LAKEHOUSE_LAKE_ROOT": str(tmp_path / "lake"), "LAKEHOUSE_OWNERSHIP_EXPIRY": "1 second"})
    gold = Ownership(s, ("gold",))
    gold.acquire()
    assert read_owner(s, "gold")["epoch"] == 1 and read_owner(s, "gold")["holder"] == gold.holder
    both = Ownership(s, ("gold", "silver"))  # all read before any is written: gold is live, so none
    with pytest.raises(CheckpointError, match=r"stage gold is in use by application lakehouse \(pid \d+ on "):
        both.acquire()
    assert read_owner(s, "silver") is None and read_owner(s, "gold")["holder"] == gold.holder  # none written

    # a dead process on this host: taken over at once, with the epoch raised and the takeover recorded
    path = tmp_path / "lake" / "_checkpoints" / "bronze" / "_lakehouse_owner.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"holder": "x", "host": socket.gethostname(), "pid": 2 ** 22 + 12345, "epoch": 7,
                                "heartbeat": time.time(), "expiry": 60}))
    bronze = Ownership(s, ("bronze",))
    bronze.acquire()
    record = read_owner(s, "bronze")
    assert record["epoch"] == 8 and record["took_over"]["pid"] == 2 ** 22 + 12345
    bronze.release()
    assert read_owner(s, "bronze")["released"]
    # a renewal in flight when the run ends (it replaced the record the release holds the tag of):
    # still given back, and this process can run the stage again at once (the CI failure of e7dc750)
    slow = s.with_overrides(ownership_expiry="60 seconds")  # no heartbeat of its own during this
    again = Ownership(slow, ("bronze",))
    again.acquire()
    etag, epoch = again._held["bronze"]
    assert again._stores["bronze"].write(again._record("bronze", epoch), etag) is not None
    again.release()
    assert read_owner(s, "bronze")["released"]
    # renewals side by side (a batch's parallel writes each fence; the heartbeat; the event log) when
    # the last renewal is old: one at a time, none taken for a loss of the stage to this very process
    racing = Ownership(slow, ("bronze",))
    racing.acquire()
    racing._renewed["bronze"] -= 100
    lost: list = []

    def fence() -> None:
        try:
            racing.fence("bronze")
        except OwnershipLost as e:
            lost.append(e)

    fences = [threading.Thread(target=fence) for _ in range(8)]
    for t in fences:
        t.start()
    for t in fences:
        t.join()
    assert not lost and read_owner(s, "bronze")["holder"] == racing.holder
    racing.check()
    racing.release()
    third = Ownership(s, ("bronze",))
    third.acquire()
    assert read_owner(s, "bronze")["epoch"] == 11 and read_owner(s, "bronze")["holder"] == third.holder
    third.release()

    # another host's live record: refused until its heartbeat is older than its expiry
    path.write_text(json.dumps({"holder": "y", "host": "elsewhere", "pid": 1, "epoch": 9, "heartbeat": time.time(),
                                "expiry": 1.0}))
    waiting = Ownership(s, ("bronze",))
    assert waiting.try_acquire()["host"] == "elsewhere"
    t0 = time.time()
    waiting.wait(poll=0.05)
    assert time.time() - t0 >= 0.5 and read_owner(s, "bronze")["epoch"] == 10

    # the paused owner: another process took its stage; its next commit is fenced, and the run's watch stops it
    waiting.fence("bronze")  # still ours
    record = read_owner(s, "bronze")
    path.write_text(json.dumps({**record, "holder": "z", "pid": 1, "host": "elsewhere", "epoch": 11}))
    time.sleep(0.6)  # past half the expiry: the fence renews, conditionally, and finds the record changed
    with pytest.raises(OwnershipLost, match=r"stage bronze: ownership lost to application .* \(epoch 11\)"):
        waiting.fence("bronze")
    with pytest.raises(OwnershipLost):
        waiting.check()
    assert read_owner(s, "bronze")["holder"] == "z"  # the fenced owner wrote nothing
    waiting.release()
    assert read_owner(s, "bronze")["holder"] == "z"  # not even its release

    # started together: one of many wins each stage
    gold.release()
    for _ in range(5):
        racers = [Ownership(s, ("silver", "gold")) for _ in range(6)]
        won = []
        threads = [threading.Thread(target=lambda o=o: won.append(o) if o.try_acquire() is None else None)
                   for o in racers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and {read_owner(s, st)["holder"] for st in ("silver", "gold")} == {won[0].holder}
        won[0].release()


def test_a_cut_offset_or_commit_file_is_told_apart_from_a_whole_one():
    from common.checkpoints import _log_problem

    offsets = 'v1\n{"batchWatermarkMs":0,"batchTimestampMs":1764100000000,"conf":{}}\n{"t":{"0":5,"1":7}}\n-'
    commit = 'v1\n{"nextBatchWatermarkMs":0}'
    assert _log_problem(offsets, 3) is None and _log_problem(commit) is None
    assert _log_problem(offsets[: len(offsets) // 2], 3) == "line 2 is not JSON"
    assert _log_problem(offsets[: offsets.index("\n{", 5)], 3) == "2 lines, at least 3 expected"
    assert _log_problem(commit[:-3]) == "line 2 is not JSON"
    assert _log_problem("") == "no version line"


class _EndsWhenAsked:
    """A query that is active the first time isActive is read and has failed from then on: the
    interleaving in which a failing availableNow query ends while await_all polls."""

    name = "bronze"

    def __init__(self):
        self.reads = 0

    @property
    def isActive(self):
        self.reads += 1
        return self.reads == 1

    def exception(self):
        return None if self.reads <= 1 else RuntimeError("records were deleted")

    def stop(self):
        pass


def test_a_query_failing_between_two_polls_is_reported_not_taken_for_done():
    query = _EndsWhenAsked()
    with pytest.raises(StreamFailedError, match=r"query bronze failed: records were deleted"):
        streams.await_all(None, [query], poll_seconds=0.01)


def test_a_progress_event_crosses_py4j_as_its_json_with_what_pyspark_gives(spark, tmp_path):
    """The progress listener reads an event through its JSON (``common.listener.progress_event``),
    not pyspark's field-by-field copy: the same values for everything the listener and the event
    log read, state operators and sources included."""
    from pyspark.sql.streaming.listener import StreamingQueryProgress

    from bench.listener import stateful_progress
    from common.listener import progress_event

    jprogress = stateful_progress(spark, str(tmp_path))
    ours, theirs = progress_event(jprogress).progress, StreamingQueryProgress.fromJObject(jprogress)
    assert ours.numInputRows == theirs.numInputRows == 900  # 300 rows read by each of three sources
    for field in ("id", "runId", "name", "batchId", "durationMs"):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert ours.processedRowsPerSecond == pytest.approx(theirs.processedRowsPerSecond, abs=0.05)  # JSON: 0.1
    assert [s.numRowsTotal for s in ours.stateOperators] == [s.numRowsTotal for s in theirs.stateOperators] \
        == [200, 200, 200]
    assert [s.numInputRows for s in ours.sources] == [s.numInputRows for s in theirs.sources] == [300] * 3
    assert json.loads(ours.json) == json.loads(theirs.json)  # what the listener reads: offsets, lag, rates


def test_ensure_table_gives_new_and_older_tables_their_properties_once(spark, tmp_path):
    """A table's properties (bronze's statistics columns) are in its creating commit; a table made
    without them (an earlier version's) gets them by one commit, and the next start adds none."""
    from common import tables

    props = {"delta.dataSkippingStatsColumns": "partition,offset"}
    schema = spark.createDataFrame([], "partition INT, offset BIGINT, value STRING")

    def state(path):
        config = {r.key: r.value for r in spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").collect()}
        return config.get("delta.dataSkippingStatsColumns"), len(tables.operations(spark, path))

    new, old = str(tmp_path / "new"), str(tmp_path / "old")
    tables.ensure_table(spark, new, schema, properties=props)
    assert state(new) == ("partition,offset", 1)
    tables.ensure_table(spark, old, schema)
    assert state(old) == (None, 1)
    tables.ensure_table(spark, old, schema, properties=props)
    assert state(old) == ("partition,offset", 2)
    tables.ensure_table(spark, old, schema, properties=props)
    assert state(old) == ("partition,offset", 2)
    spark.createDataFrame([(0, 5, "x"), (1, 7, "y")], schema.schema).write.format("delta").mode("append").save(old)
    stats = [json.loads(r.stats) for r in spark.read.json(f"{old}/_delta_log/*.json").where("add IS NOT NULL")
             .select("add.stats").collect()]
    assert stats and all(set(s["minValues"]) == {"partition", "offset"} for s in stats)


def test_the_log_look_ups_without_describe_agree_with_describe_history_and_detail(spark, tmp_path, monkeypatch):
    """``tables.num_files`` (the snapshot's checksum) and ``tables.operations`` (the commit files of a
    short log) give what DESCRIBE DETAIL and DESCRIBE HISTORY give, at every step of a table's life,
    and ``streams.commit_order_start`` the same version either way."""
    from common import tables

    path = str(tmp_path / "t")
    assert tables.num_files(spark, path) == 0 and not tables.has_data(spark, path)  # no table
    tables.ensure_table(spark, path, spark.createDataFrame([], "id INT"))
    assert not tables.has_data(spark, path)  # a table, no file

    def agree():
        detail = spark.sql(f"DESCRIBE DETAIL delta.`{path}`").collect()[0].numFiles
        history = {r.version: r.operation for r in spark.sql(f"DESCRIBE HISTORY delta.`{path}`").collect()}
        assert tables.num_files(spark, path) == detail
        assert tables.has_data(spark, path) == (detail > 0)
        assert tables.operations(spark, path) == history
        start = streams.commit_order_start(spark, path)
        with monkeypatch.context() as m:
            m.setattr(tables, "SHORT_LOG", 0)  # DESCRIBE HISTORY's way
            assert tables.operations(spark, path) == history
            assert streams.commit_order_start(spark, path) == start
        return start

    assert agree() == 0  # created, nothing since: read from its creation
    for n in range(3):
        spark.range(n * 10, n * 10 + 10).selectExpr("CAST(id AS INT) AS id").write.format("delta").mode("append").save(path)
    assert agree() == 1  # the first commit after its creation
    spark.sql(f"DELETE FROM delta.`{path}`")  # version 4 empties it: read from the version after it
    spark.range(5).selectExpr("CAST(id AS INT) AS id").write.format("delta").mode("append").save(path)
    assert agree() == 5
    spark.sql(f"OPTIMIZE delta.`{path}`")
    assert agree() == 5
    spark.range(3).selectExpr("CAST(id AS INT) AS id").write.format("delta").mode("append").save(path)
    crc = sorted(tmp_path.glob("t/_delta_log/*.crc"))[-1]  # a commit whose writer left no checksum:
    crc.unlink()  # counted from the table's state instead
    assert crc.name.startswith(f"{tables.snapshot(spark, path).version():020d}")
    assert agree() == 5
