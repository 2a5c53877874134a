"""Delta table helpers shared by the stages: create-if-missing, constraints, tagged micro-batch writes."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Iterable

from common.errors import SetupError

log = logging.getLogger("lakehouse.tables")


def is_delta_table(spark, path: str) -> bool:
    from delta.tables import DeltaTable

    return DeltaTable.isDeltaTable(spark, path)


class NotReady(Exception):
    """A table is not yet as its writer needs it, and the caller may not change it (``ensure_table``
    with ``write=False``: a standby building its queries before it owns their stage)."""


def ensure_table(spark, path: str, empty_df, partition_by: Iterable[str] = (),
                 not_null: Iterable[str] = (), checks: dict[str, str] | None = None,
                 properties: dict[str, str] | None = None, write: bool = True) -> None:
    """Create the Delta table at ``path`` with ``empty_df``'s schema (``empty_df``: an empty DataFrame
    or the schema itself; ``not_null`` columns declared NOT NULL) if it does not exist yet; add the
    columns a table written by an earlier version lacks (nullable: its old rows read them as null);
    then make sure its CHECK constraints and its table ``properties`` are in place. A new table gets
    its constraints and properties in its creating commit (Delta keeps a CHECK constraint as the
    table property ``delta.constraints.<name>``, as ``ADD CONSTRAINT`` does): one commit, not one
    per constraint.
    ``write=False``: change nothing, raise ``NotReady`` where a change would be needed."""
    from delta.tables import DeltaTable
    from pyspark.sql.types import StructField, StructType

    fields = (empty_df if isinstance(empty_df, StructType) else empty_df.schema).fields
    current = snapshot(spark, path)  # one listing of its log: does it exist, its columns, its constraints
    if current.version() < 0:
        if not write:
            raise NotReady(f"{path} does not exist yet")
        required = set(not_null)
        schema = StructType([StructField(f.name, f.dataType, f.nullable and f.name not in required)
                             for f in fields])
        builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(schema).partitionedBy(*partition_by)
        for name, predicate in (checks or {}).items():
            builder = builder.property(f"delta.constraints.{name.lower()}", predicate)
        for key, value in (properties or {}).items():
            builder = builder.property(key, value)
        try:
            builder.execute()
            return
        except Exception as e:  # another process may have created it first
            current = snapshot(spark, path)
            if current.version() < 0:
                from common.streams import short_error

                raise SetupError(f"cannot create Delta table {path}: {short_error(e)}") from None
    have = set(current.schema().fieldNames())
    new = [f for f in fields if f.name not in have]
    config = _configuration(spark, current) if checks or properties else {}
    missing = [name for name in (checks or {}) if f"delta.constraints.{name.lower()}" not in config]
    changed = {k: v for k, v in (properties or {}).items() if config.get(k) != v}
    if not write and (new or missing or changed):
        raise NotReady(f"{path} lacks {', '.join([f.name for f in new] + missing + list(changed))}")
    if new:
        spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ("
                  + ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in new) + ")")
    for name in missing:
        spark.sql(f"ALTER TABLE delta.`{path}` ADD CONSTRAINT {name} CHECK ({checks[name]})")
    if changed:  # a table made by an earlier version: one commit, once
        spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ("
                  + ", ".join(f"'{k}' = '{v}'" for k, v in changed.items()) + ")")


def statistics_on(columns: Iterable[str]) -> dict[str, str]:
    """The table property that keeps Delta's per-file statistics (min/max, null counts: data
    skipping) on ``columns`` only, for ``ensure_table``'s ``properties``: Delta computes them in every
    write task, on every column by default."""
    return {"delta.dataSkippingStatsColumns": ",".join(columns)}


def ensure_all(spark, specs, write: bool = True) -> None:
    """``ensure_table`` for each ``(path, empty_df, options)`` of ``specs``, side by side: each is a
    few MinIO round trips and one small commit, so a stage's dozen tables on a new lake take about
    the time of the slowest instead of the sum (gold's 14: 3.5 s one after the other here)."""
    from common.batches import run_parallel

    run_parallel([lambda p=path, df=df, kw=options: ensure_table(spark, p, df, write=write, **kw)
                  for path, df, options in specs])


def _configuration(spark, current) -> dict[str, str]:
    """The table properties of a table's snapshot (``snapshot``), CHECK constraints included
    (``delta.constraints.<name>``, lower case)."""
    config = spark._jvm.scala.jdk.javaapi.CollectionConverters.asJava(current.metadata().configuration())
    return {str(k): str(config.get(k)) for k in config.keySet()}


# How far back a restart looks for the batch its previous run was writing: that writer's last
# commit, possibly followed by a few maintenance commits (OPTIMIZE, VACUUM) - never 200 of them.
HISTORY_DEPTH = 200


def commit_tag(app_id: str, batch_id: int, **extra) -> str:
    """The ``userMetadata`` of a micro-batch's commit: which writer, which batch (shown by DESCRIBE
    HISTORY), and what else the writer states about the commit (silver: its event-time watermark,
    ``silver.watermarks``)."""
    return json.dumps({"writer": app_id, "batch": batch_id, **extra}, sort_keys=True)


def commit_metadata(spark, path: str, version: int) -> dict | None:
    """The tag (``commit_tag``) of version ``version`` of the table at ``path``, read from its
    commit file alone; None for an untagged commit (OPTIMIZE, DDL) or a file cleaned up."""
    from common.fs import Fs

    return _tag_of(Fs(spark).read_text(_commit_file(path, version)))


# A table's log up to this many commits is read file by file (``operations``); a longer one with
# DESCRIBE HISTORY (its fixed cost, 0.3-0.7 s here, then one job for any number of commits).
SHORT_LOG = 20


def operations(spark, path: str) -> dict[int, str]:
    """Version -> the operation of that commit (``CREATE TABLE``, ``WRITE``, ``OPTIMIZE``, ...) for every
    commit of the Delta table at ``path`` its log still holds, as DESCRIBE HISTORY gives them."""
    from common.fs import Fs

    latest = snapshot(spark, path).version()
    if 0 <= latest < SHORT_LOG:
        fs = Fs(spark)
        found = {v: _operation_of(fs.read_text(_commit_file(path, v))) for v in range(latest + 1)}
        if all(op is not None for op in found.values()):
            return found
    return {r.version: r.operation for r in
            spark.sql(f"DESCRIBE HISTORY delta.`{path}`").select("version", "operation").collect()}


def _operation_of(commit_text: str | None) -> str | None:
    info = _commit_info(commit_text)
    return info.get("operation") if info else None


def _commit_file(path: str, version: int) -> str:
    return f"{path}/_delta_log/{version:020d}.json"


def _commit_info(commit_text: str | None) -> dict | None:
    """The ``commitInfo`` action of a commit file's text (None: no file, none, or not JSON)."""
    for line in (commit_text or "").splitlines():
        if '"commitInfo"' not in line:
            continue
        try:
            info = json.loads(line)["commitInfo"]
        except (ValueError, KeyError, TypeError):
            return None
        return info if isinstance(info, dict) else None
    return None


def _tag_of(commit_text: str | None) -> dict | None:
    info = _commit_info(commit_text)
    if info is None:
        return None
    try:
        tag = json.loads(info.get("userMetadata") or "")
    except (ValueError, TypeError):
        return None
    return tag if isinstance(tag, dict) else None


def snapshot(spark, path: str):
    """Delta's latest snapshot of the table at ``path`` (a JVM object): its log listed from the last
    checkpoint, no state reconstruction (~20 ms here, against ~0.2 s for ``DESCRIBE DETAIL`` or
    ``DESCRIBE HISTORY``, which reconstruct it or read every commit they show)."""
    jvm = spark._jvm
    none = jvm.scala.Option.empty()
    return jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, path).update(False, none, none)


def table_id(spark, path: str) -> str:
    """The table's id (its metadata's, what a Delta stream's offsets call ``reservoirId``)."""
    return str(snapshot(spark, path).metadata().id())


def last_committed_batch(spark, path: str, app_id: str, depth: int = HISTORY_DEPTH, latest: int | None = None) -> int:
    """The highest batch id ``app_id`` committed to the table (-1 when none): the tag of that
    writer's last commit, looked for from the table's latest version back, at most ``depth``
    commits, one commit file each (a writer's batch ids only grow, so its last commit holds the
    highest; usually the latest version: one read, where the history of 200 commits read them all,
    ~1 s per table at a restart). The walk also stops, with -1, at a commit file cleaned up (Delta
    removes the oldest first: none older is left) and at a commit of an earlier checkpoint of the
    same query and table (``<flow>:<other query id>:<table>``: a checkpoint replaces another, never
    runs between its commits, so this writer has none before it) - a writer that never wrote a
    table reads a few commit files, not ``depth``. ``latest``: the table's latest version when the
    caller knows it (``BatchContext.read_replaced``), else Delta-Spark's snapshot tells."""
    from common.fs import Fs

    fs = Fs(spark)
    flow, _, rest = app_id.partition(":")
    table = rest.rpartition(":")[2]
    latest = int(snapshot(spark, path).version()) if latest is None else latest
    for version in range(latest, max(-1, latest - depth), -1):
        text = fs.read_text(_commit_file(path, version))
        if text is None:
            return -1
        tag = _tag_of(text) or {}
        writer = tag.get("writer")
        if writer == app_id:
            batch = tag.get("batch")
            if isinstance(batch, int) and not isinstance(batch, bool):
                return batch
        elif isinstance(writer, str) and writer.startswith(f"{flow}:") and writer.endswith(f":{table}"):
            return -1
    if latest + 1 > depth:
        log.warning("%s: none of its last %d commits is from writer %s; if that writer committed before them, "
                    "a batch it replays now is written again", path, depth, app_id)
    return -1


def append_batch(df, path: str, app_id: str, batch_id: int, txn: bool = False, merge_schema: bool = False,
                 **extra) -> None:
    """Append one micro-batch's rows in a commit tagged with (``app_id``, ``batch_id``) and
    ``extra``. With ``txn`` also Delta's txnAppId/txnVersion, which skips a batch that an earlier,
    txn-only version of the project committed; it costs a state reconstruction of the table
    (~0.7 s here), so only a run's first write to a table that holds no tagged commit of
    its writer asks for it (see ``batches.BatchContext``)."""
    w = df.write.format("delta").mode("append").option("userMetadata", commit_tag(app_id, batch_id, **extra))
    if txn:
        w = w.option("txnAppId", app_id).option("txnVersion", str(batch_id))
    if merge_schema:
        w = w.option("mergeSchema", "true")
    w.save(path)


def has_data(spark, path: str) -> bool:
    """The Delta table at ``path`` exists and holds at least one data file."""
    return num_files(spark, path) > 0


def num_files(spark, path: str) -> int:
    """The number of data files of the Delta table at ``path`` (0 when there is no table): from the
    checksum file (``.crc``) of its latest version when its commit wrote one (Delta-Spark does), one
    small read; else from its state (a Spark job). Delta-Spark's own ``numOfFilesIfKnown`` ran three
    Spark jobs here (0.5-0.8 s) even with the ``.crc`` there, and ``DESCRIBE DETAIL`` 0.1-0.5 s: paid
    at each new checkpoint's start for every table it writes (``checkpoints.check_not_orphaned``,
    ``bronze.job.resume_offsets``: every new lake's first bronze start). A path without a log is
    answered by one listing (a Delta log object for it cost ~60 ms: gold's 13 tables on a new lake)."""
    from common.fs import Fs

    fs = Fs(spark)
    if not fs.has_children(f"{path}/_delta_log"):
        return 0
    current = snapshot(spark, path)
    version = current.version()
    if version < 0:
        return 0
    checksum = fs.read_json(f"{path}/_delta_log/{version:020d}.crc") or {}
    if isinstance(checksum.get("numFiles"), int):
        return checksum["numFiles"]
    return int(current.numOfFiles())


def require_table(spark, path: str, what: str, hint: str) -> None:
    if not is_delta_table(spark, path):
        raise SetupError(f"{what} at {path} does not exist yet; {hint}")


def maintain(spark, path: str, vacuum_hours: float | None = None) -> dict[str, int]:
    """Compact a table's small files (OPTIMIZE) and, when ``vacuum_hours`` is given, delete files
    no version younger than that still needs (VACUUM). Returns files before/after.

    Hot streaming writes do not compact per commit (no optimizeWrite/autoCompact: a shuffle and an
    OPTIMIZE check per commit cost more latency than they save); a running stage compacts its own
    tables every LAKEHOUSE_COMPACT_EVERY commits (``Compactor``). This is the pass for a stopped
    lake or a layer as a whole (and VACUUM), run while the stages are stopped."""
    before = num_files(spark, path)
    spark.sql(f"OPTIMIZE delta.`{path}`")
    if vacuum_hours is not None:
        spark.sql(f"VACUUM delta.`{path}` RETAIN {vacuum_hours:g} HOURS")
    return {"files_before": before, "files_after": num_files(spark, path)}


def _phase(k: int, every: int) -> int:
    """Where the count of the ``k``-th table (0, 1, ...) of a ``Compactor`` starts: the fractional
    parts of k x the golden ratio, scaled to ``every`` (0, 61, 23, 85, 47, 9, 70, 32, 94, ... for
    100), so no two of a stage's tables reach ``every`` in the same batch while ``every`` is large."""
    return int(every * ((k * 0.6180339887498949) % 1.0))


class Compactor:
    """In-app compaction: the application that writes a table OPTIMIZEs it every ``every`` of its
    commits, in one background thread (one table at a time, in its own scheduler pool), so a
    stream running for days keeps a bounded number of files.

    It runs in the writing application on purpose: Delta's S3 log store is safe for one writing
    process per table, so an OPTIMIZE from a second process beside the stream could lose a commit.
    Inside the application the log store serialises the commits, and OPTIMIZE only rearranges
    files (``dataChange=false``): it does not conflict with the stream's appends, and streaming
    readers of the table skip its commits. Files of at least
    ``spark.databricks.delta.optimize.minFileSize`` (``common.spark``) are left alone, so a
    compaction rewrites the recent small files, not the whole table. One per run
    (``common.run.RunContext``): one background compaction at a time.

    Spread over time: a stage writes most of its tables in every batch, so with one counter each
    starting at 0 they all reached ``every`` in the same batch and were compacted back to back
    (issue 35's soak at 800 orders/s: ~110 s of OPTIMIZE of nine tables on 2 cores, silver's
    batches 9-18 s -> 52 s). The k-th table a run writes starts its count at
    ``every * frac(k * phi)`` (``_phase``: the golden-ratio sequence, evenly spread for any
    number of tables), so its first compaction comes that much earlier and later ones every
    ``every`` commits after it: one table at a time, about ``every / tables`` commits apart."""

    def __init__(self):
        self._counts: dict[str, int] = {}
        self._pending: set[str] = set()
        self._queue: queue.Queue = queue.Queue()
        self._idle = threading.Condition()
        self._busy = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.fence = None  # before each compaction: raises once another process owns the run's stages

    def committed(self, spark, path: str, every: int) -> None:
        """Count one commit to ``path``; the ``every``-th since its last compaction schedules one
        (``every`` 0: never)."""
        if every <= 0:
            return
        with self._lock:
            if path not in self._counts:
                self._counts[path] = _phase(len(self._counts), every)
            n = self._counts[path] + 1
            self._counts[path] = 0 if n >= every else n
            if n < every or path in self._pending:
                return
            self._pending.add(path)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="delta-compaction", daemon=True)
                self._thread.start()
        with self._idle:
            self._busy += 1
        self._queue.put((spark, path))

    def _loop(self) -> None:
        while True:
            spark, path = self._queue.get()
            try:
                if self.fence is not None:
                    self.fence()
                self._compact(spark, path)
            except Exception as e:  # noqa: BLE001 - the ownership lost: the run stops, nothing compacted
                log.warning("compaction of %s not started: %s", path, str(e).splitlines()[0][:200])
            finally:
                with self._lock:
                    self._pending.discard(path)
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    @staticmethod
    def _compact(spark, path: str) -> None:
        t0 = time.monotonic()
        try:
            spark.sparkContext.setLocalProperty("spark.scheduler.pool", "compaction")
            spark.sparkContext.setJobDescription(f"compaction of {path}")
            m = spark.sql(f"OPTIMIZE delta.`{path}`").collect()[0].metrics
            log.info("compacted %s: %d small files into %d (%.1f s)", path.rsplit("/", 2)[-2] + "/" +
                     path.rsplit("/", 1)[-1], m.numFilesRemoved, m.numFilesAdded, time.monotonic() - t0)
        except Exception as e:  # noqa: BLE001 - a missed compaction is retried at the next threshold
            log.warning("compaction of %s failed, the next one retries: %s", path, str(e).splitlines()[0][:200])

    def wait(self, timeout: float = 300.0) -> bool:
        """Wait until every scheduled compaction has run (an application finishing its run)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._busy > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

