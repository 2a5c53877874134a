"""Every readStream and writeStream of the lakehouse goes through this module.

Trigger, checkpoint, sink and listener choices are made here once:

* ``read_kafka`` / ``read_delta`` - the two streaming sources;
* ``start`` - writes a streaming DataFrame to a Delta table (or the console, or a
  ``foreachBatch`` function, or Kafka) with the query's own checkpoint and name;
* ``flow_spec`` - the ``start`` arguments of a query declared in ``common.pipeline``;
* ``BatchContext`` / ``run_parallel`` - a ``foreachBatch``'s exactly-once writes (commits tagged with
  the checkpoint's query id and the batch id) and its side-by-side writes;
* ``computed_once`` - a stateful query's micro-batch, computed once for all its writes;
* ``ProgressLogger`` - a StreamingQueryListener that logs each micro-batch's progress;
* ``await_all`` - waits for a set of queries, stopping them all on SIGINT/SIGTERM or when one fails.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable

from common.eventlog import event_row, offsets_total
from common.errors import SettingsError, StreamFailedError, TopicNotFoundError
from common.settings import Settings, Trigger

log = logging.getLogger("lakehouse.streams")
SINKS = ("delta", "console")
# Spark's continuous processing supports only these sinks (and map-like queries).
CONTINUOUS_SINKS = ("kafka", "console", "memory")


@dataclass(frozen=True)
class StreamOptions:
    """Per-run choices for a stage, from the CLI (falling back to settings)."""

    trigger: Trigger
    sink: str = "delta"

    @classmethod
    def from_args(cls, settings: Settings, trigger: str | None = None, sink: str | None = None) -> "StreamOptions":
        spec = Trigger.parse(trigger) if trigger else settings.trigger_spec
        sink = sink or "delta"
        if sink not in SINKS:
            raise SettingsError(f"--sink {sink!r} is not valid; valid: {', '.join(SINKS)}")
        # Checked before anything starts: the stages write Delta, which continuous mode cannot.
        check_trigger(spec, sink, "of this run")
        return cls(spec, sink)


def check_trigger(trigger: Trigger, sink: str, query: str, stateful: bool = False) -> None:
    if trigger.kind == "continuous" and (sink not in CONTINUOUS_SINKS or stateful):
        raise SettingsError(
            f"trigger {trigger} is not supported for query {query} (sink {sink}"
            f"{', stateful' if stateful else ''}): Spark's continuous mode supports only map-like queries "
            f"to {', '.join(CONTINUOUS_SINKS)}; use processingTime=<interval> or availableNow")


def _apply_trigger(writer, trigger: Trigger):
    if trigger.kind == "availableNow":
        return writer.trigger(availableNow=True)
    if trigger.kind == "once":  # older form of availableNow: one batch with everything
        return writer.trigger(once=True)
    if trigger.kind == "continuous":
        return writer.trigger(continuous=trigger.interval)
    return writer.trigger(processingTime=trigger.interval)


def kafka_options(settings: Settings, topics: Iterable[str] | None = None, **extra: str) -> dict[str, str]:
    """Spark's Kafka options from settings: the brokers and, for a source (``topics``), the
    subscription, the headers and LAKEHOUSE_FAIL_ON_DATA_LOSS; ``extra`` adds or overrides."""
    options = {"kafka.bootstrap.servers": settings.kafka_bootstrap_servers}
    if topics is not None:
        options.update({"subscribe": ",".join(topics), "includeHeaders": "true",
                        "failOnDataLoss": str(settings.fail_on_data_loss).lower()})
    return {**options, **extra}


def read_kafka(spark, settings: Settings, topics: Iterable[str], starting_offsets: str | None = None):
    """A streaming read of Kafka topics, with the source options from settings (``starting_offsets``
    overrides LAKEHOUSE_STARTING_OFFSETS; either only counts on a new checkpoint)."""
    topics = list(topics)
    ensure_topics_exist(settings, topics)
    reader = (spark.readStream.format("kafka")
              .options(**kafka_options(settings, topics, startingOffsets=starting_offsets or settings.starting_offsets)))
    if settings.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(settings.max_offsets_per_trigger))
    return reader.load()


def ensure_topics_exist(settings: Settings, topics: Iterable[str]) -> None:
    from common.clients import kafka_admin

    admin = kafka_admin(settings, timeout_ms=5000)
    try:
        existing = set(admin.list_topics())
    finally:
        admin.close()
    missing = [t for t in topics if t not in existing]
    if missing:
        raise TopicNotFoundError(
            f"Kafka topic {missing[0]!r} does not exist at {settings.kafka_bootstrap_servers}; create it "
            "(`lakehouse stack up` creates the configured topics) or fix the LAKEHOUSE_TOPIC_* setting")


# Operations after which a Delta table may be empty: where a read in commit order can begin.
_EMPTYING = ("CREATE TABLE", "CREATE OR REPLACE TABLE", "REPLACE TABLE", "DELETE", "TRUNCATE")
# Of those, the ones that leave the table empty by definition (no data written with them, unlike a
# DELETE's predicate or CREATE ... AS SELECT): no read needed to know it.
_EMPTIED = ("CREATE TABLE", "CREATE OR REPLACE TABLE", "REPLACE TABLE", "TRUNCATE")


def commit_order_start(spark, path: str) -> int | None:
    """The version from which a new stream reads Delta table ``path`` commit by commit (Delta's
    ``startingVersion``) instead of from its snapshot: the first version after the table was last
    empty (created, or emptied by ``lakehouse refresh``). Delta hands a snapshot's files to a
    stream ordered by modification time, which S3 keeps in whole seconds, then by file name (a
    random UUID), so a rate-limited stream starting from a snapshot can read a later commit's file
    before an earlier one's; silver would judge the earlier records by the watermark the later
    ones moved, and send them to the late ledger. None (read the snapshot) when the table was
    never empty at a version the log still holds, or was vacuumed since (the files of the early
    commits may be gone), or was emptied by its latest commit. Reads the table's history once,
    when a checkpoint is new."""
    history = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").select("version", "operation").collect()
    latest = max(r.version for r in history)
    operation = {r.version: r.operation for r in history}
    for version in sorted((r.version for r in history if r.operation in _EMPTYING), reverse=True):
        try:
            empty = (operation[version] in _EMPTIED
                     or spark.read.format("delta").option("versionAsOf", version).load(path).isEmpty())
        except Exception as e:  # noqa: BLE001 - that version is no longer in the log
            log.warning("%s: version %d is no longer in the log (%s); a new stream reads the snapshot, in the "
                        "order Delta gives its files", path, version, str(e).splitlines()[0][:120])
            return None
        if not empty:
            continue
        if any(operation.get(v, "").startswith("VACUUM") for v in range(version + 1, latest + 1)):
            log.warning("%s was vacuumed since version %d; a new stream reads the snapshot, in the order Delta "
                        "gives its files", path, version)
            return None
        if version == latest:  # nothing committed since: a created table is read from its creation
            return version if operation[version].startswith(("CREATE", "REPLACE")) else None
        return version + 1
    return None


def read_delta(spark, settings: Settings, path: str, new_checkpoint: bool = False, **options):
    """A streaming read of a Delta table, at most LAKEHOUSE_MAX_BYTES_PER_TRIGGER per micro-batch.
    With ``new_checkpoint`` (silver reading bronze), commit by commit from where the table was
    last empty (``commit_order_start``): the order its rows were written. Gold reads silver's
    snapshot instead (``gold.job._silver`` says why). Delta ignores ``startingVersion`` once the
    checkpoint holds offsets."""
    start = commit_order_start(spark, path) if new_checkpoint else None
    if start is not None:
        options = {"startingVersion": str(start), **options}
    reader = spark.readStream.format("delta").option("maxBytesPerTrigger", settings.max_bytes_per_trigger)
    for k, v in options.items():
        reader = reader.option(k, v)
    return reader.load(path)


def start(df, *, name: str, checkpoint: str, options: StreamOptions, foreach_batch: Callable | None = None,
          output_mode: str = "append", stateful: bool = False, signature: dict | None = None,
          claimed: bool = False):
    """Start one streaming query with its own name and checkpoint.

    ``signature`` names the settings the query's state depends on (window, watermark, dedup key):
    a restart on the checkpoint with other values fails before it starts, as does a second copy
    of the query on the same checkpoint (``common.checkpoints``).
    ``options.sink == "console"`` replaces any sink with the console (debugging).
    """
    if options.sink != "console" and foreach_batch is None:
        raise ValueError(f"query {name}: every sink of the pipeline is a foreachBatch function")
    sink = "console" if options.sink == "console" else "foreachBatch"
    check_trigger(options.trigger, sink, name, stateful)
    writer = df.writeStream.queryName(name).outputMode(output_mode)
    if sink == "console":
        writer = writer.format("console").option("truncate", "false").option("numRows", "20")
    else:
        if not claimed:
            _claim(df, name, checkpoint, signature)
        writer = writer.option("checkpointLocation", checkpoint).foreachBatch(foreach_batch)
    writer = _apply_trigger(writer, options.trigger)
    sc = df.sparkSession.sparkContext
    sc.setLocalProperty("spark.scheduler.pool", name)  # the query's own pool: FAIR between queries
    try:
        query = writer.start()
    finally:
        sc.setLocalProperty("spark.scheduler.pool", None)
    log.debug("started query %s (id %s) -> %s", name, query.id, sink)
    return query


def _claim(df, name: str, checkpoint: str, signature: dict | None) -> None:
    from common.checkpoints import claim

    claim(df.sparkSession, checkpoint, name, {"query": name, **(signature or {})})


def flow_spec(flow, df, options: StreamOptions, **kwargs) -> dict:
    """``start`` keyword arguments for a query of the declared graph (``common.pipeline.Flow``).
    A flow's own trigger replaces a live run's (``processingTime``); one-shot runs keep theirs."""
    if flow.trigger and options.trigger.kind == "processingTime":
        options = StreamOptions(Trigger.parse(flow.trigger), options.sink)
    return dict(df=df, name=flow.name, checkpoint=flow.checkpoint, options=options,
                signature=flow.signature_dict(), stateful=flow.stateful, **kwargs)


def start_all(specs: list[dict]) -> list:
    """Start a stage's queries (``start`` keyword arguments each) after checking every checkpoint
    first: a refused checkpoint stops the stage before any of its queries has run."""
    for spec in specs:
        if spec["options"].sink != "console":
            _claim(spec["df"], spec["name"], spec["checkpoint"], spec.get("signature"))
    return [start(claimed=True, **spec) for spec in specs]


class BatchContext:
    """What a ``foreachBatch`` function of a declared query needs to write its tables exactly once.

    Every commit is tagged (``tables.commit_tag``) with the writer's id - the query, the
    checkpoint's own query id (read once from the checkpoint) and the table - and the batch id.
    Within one run Spark executes each batch id once, in increasing order; only the first batch a
    run executes can be a replay of one the previous run was writing when it stopped. So the first
    write of a run to each table looks up the last batch this writer committed there (the tags of
    the table's recent commits, plus Delta's txnAppId for commits of earlier versions of the project)
    and skips a batch already there; later writes need no lookup (a txnAppId lookup on every commit
    reconstructed the table's state: ~0.7 s per table per batch). A new checkpoint gets a new query
    id, so its batch 0 is never mistaken for a replay of the old checkpoint's batch 0; and a run
    that started on a new checkpoint has nothing to look up (no commit carries the new id yet),
    which spares a new lake's first batch one history read and one state reconstruction per table.
    Make one per query run (the stage's ``start``). This relies on one running copy per checkpoint
    (the checkpoint lease, ``common.checkpoints``): two live copies would each append every batch.
    Every ``compact_every`` commits to a table (LAKEHOUSE_COMPACT_EVERY), the application compacts
    it (``tables.Compactor``).
    """

    def __init__(self, flow, compact_every: int = 0, query_id: str | None = None, new_checkpoint: bool = False):
        self.flow = flow
        self.compact_every = compact_every
        self._query_id = query_id
        self._new = new_checkpoint
        self._last: dict[str, int] = {}  # table -> highest batch id known committed (after the first write)
        self._replaced: dict[str, int] = {}  # table -> commits of this run by ``replace``

    @classmethod
    def of(cls, spark, flow, settings: Settings) -> "BatchContext":
        """The context of one run of ``flow``'s query, made before the query starts (when the
        checkpoint can still be seen to be new)."""
        from common.checkpoints import is_new

        return cls(flow, settings.compact_every, new_checkpoint=is_new(spark, flow.checkpoint))

    def query_id(self, spark) -> str:
        """The checkpoint's own query id (Spark's query id)."""
        if self._query_id is None:
            from common.checkpoints import query_id

            self._query_id = query_id(spark, self.flow.checkpoint)
        return self._query_id

    def app_id(self, spark, table: str) -> str:
        return f"{self.flow.name}:{self.query_id(spark)}:{table}"

    def _should_write(self, spark, table: str, path: str, batch_id: int) -> tuple[str, bool] | None:
        """(app id, first write of the run) for a batch the table does not hold yet, else None."""
        from common.tables import last_committed_batch

        app_id = self.app_id(spark, table)
        first = table not in self._last and not self._new
        if first:
            self._last[table] = last_committed_batch(spark, path, app_id)
        self._last.setdefault(table, -1)
        if batch_id <= self._last[table]:
            log.info("%s batch %d: already in %s (a replay after a restart), skipped", self.flow.name, batch_id,
                     table)
            return None
        return app_id, first

    def holds(self, spark, table: str, path: str, batch_id: int) -> bool:
        """The table already holds this batch (a replay after a restart)."""
        return self._should_write(spark, table, path, batch_id) is None

    def append(self, df, table: str, path: str, batch_id: int, **tag) -> None:
        """Append the batch's rows for ``table`` unless the table already holds this batch; ``tag``
        goes into the commit's tag."""
        from common.tables import append_batch, compactor

        todo = self._should_write(df.sparkSession, table, path, batch_id)
        if todo:
            with self._committing(table, batch_id):
                append_batch(df, path, todo[0], batch_id, txn=todo[1], **tag)
            compactor.committed(df.sparkSession, path, self.compact_every)

    def replace(self, df, table: str, path: str, batch_id: int, settings: Settings, **tag) -> None:
        """Replace the rows of the small table ``table`` by the batch's (``deltars.replace``: from
        the driver, through delta-rs) unless it already holds this batch; every ``compact_every``
        commits, delete the files its replaced rows left (``deltars.vacuum``)."""
        from common import deltars
        from common.tables import commit_tag

        todo = self._should_write(df.sparkSession, table, path, batch_id)
        if todo:
            with self._committing(table, batch_id):
                deltars.replace(df, path, settings, commit_tag(todo[0], batch_id, **tag),
                                txn=(todo[0], batch_id) if todo[1] else None)
            self._replaced[table] = self._replaced.get(table, 0) + 1
            if self.compact_every and self._replaced[table] % self.compact_every == 0:
                try:
                    log.info("%s: %d replaced files of %s deleted", self.flow.name, deltars.vacuum(path, settings),
                             table)
                except Exception as e:  # noqa: BLE001 - housekeeping: the next one catches up
                    log.warning("%s: the replaced files of %s not deleted this time: %s", self.flow.name, table,
                                str(e).splitlines()[0][:200])

    @contextmanager
    def _committing(self, table: str, batch_id: int):
        """Around the commit of ``batch_id`` to ``table``: known committed after it, unknown if it
        failed (the commit may have landed: looked up again at the next write)."""
        try:
            yield
        except BaseException:
            self._last.pop(table, None)
            self._new = False
            raise
        self._last[table] = batch_id


@contextmanager
def computed_once(batch):
    """The micro-batch of a stateful query, computed once and kept for every read and write of its
    ``foreachBatch`` (a local checkpoint: the rows on the executors, no lineage back to the state
    store), released on exit.

    ``persist()`` was not enough: silver's quarantine write still ran the dedup operators again
    from their shuffle (its task read 18,000 shuffle records for a 9,000-record batch; the state
    operators' row counts came out 3x) and every re-run reloads the state store version it has
    just committed (SPARK-47329). With the local checkpoint a silver batch of 266,657 records
    took 10.6 and 7.8 s instead of 24.0 and 20.8 s (``bench/README.md``). The price: an executor
    lost during the batch fails it (its blocks cannot be recomputed); the query stops and its
    restart replays the batch, whose writes are exactly-once (``BatchContext``)."""
    kept = batch.localCheckpoint(eager=True)
    try:
        yield kept
    finally:
        try:  # the blocks now, not at the driver's next GC (the context cleaner's weak references)
            kept._jdf.queryExecution().analyzed().rdd().unpersist(False)
        except Exception as e:  # noqa: BLE001 - the cleaner frees them later anyway
            log.debug("local checkpoint of a micro-batch not released at once: %s", e)


def run_parallel(tasks: list[Callable[[], None]]) -> None:
    """Run independent writes of one micro-batch side by side (each its own Spark job; the MinIO
    round trips of one Delta commit overlap another's work). Re-raises the first failure."""
    if len(tasks) <= 1:
        for t in tasks:
            t()
        return
    from pyspark import InheritableThread  # keeps the query's scheduler pool and job properties

    errors: list[BaseException] = []

    def guarded(task):
        try:
            task()
        except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread below
            errors.append(e)

    threads = [InheritableThread(target=guarded, args=(t,)) for t in tasks[1:]]
    for th in threads:
        th.start()
    guarded(tasks[0])
    for th in threads:
        th.join()
    if errors:
        raise errors[0]


def install_progress_logger(spark, settings: Settings | None = None) -> None:
    """Register the progress listener once per session."""
    global _listener
    if getattr(spark, "_lakehouse_listener", None) is None:
        listener = ProgressLogger(spark, settings)
        spark.streams.addListener(listener)
        spark._lakehouse_listener = _listener = listener


_listener = None  # this process's ProgressLogger (foreachBatch functions see a cloned session)


def count_batch(query_id: str, batch_id: int, event_watermark: str | None = None, **counts: int) -> None:
    """Batch ``batch_id``'s data-quality counts (``eventlog.COUNTS``: quarantined, dropped, late;
    ``eventlog.LATENCY``) and the query's own event-time watermark when it keeps one (silver: per
    source), logged with that batch's progress in the event log."""
    if _listener is not None:
        _listener.add_counts(query_id, batch_id, counts, event_watermark)


def follow(names, stage: str, events) -> None:
    """Log the progress of the queries named ``names`` (one stage's) to the event log ``events``;
    called before they start, so that no batch can finish unlogged."""
    if _listener is not None:
        for name in names:
            _listener.follow(name, stage, events)


def _make_listener_base():
    from pyspark.sql.streaming import StreamingQueryListener

    return StreamingQueryListener


def source_lag(progress: dict) -> str:
    """How far behind its source a query is: Kafka records, or Delta files, not yet processed."""
    parts = []
    for src in progress.get("sources", []):
        latest, end = offsets_total(src.get("latestOffset")), offsets_total(src.get("endOffset"))
        if latest is not None and end is not None:
            parts.append(f"{latest - end} records")
        elif "numFilesOutstanding" in (src.get("metrics") or {}):
            parts.append(f"{src['metrics']['numFilesOutstanding']} files")
    return ", ".join(parts) or "-"


class ProgressLogger(_make_listener_base()):  # type: ignore[misc]
    """Logs one line per micro-batch (query, batch id, input rows, rows/s, duration) and hands each
    followed query's progress, with the batch's own counts, to its run's event log
    (``common.eventlog``: the history ``lakehouse status`` reads)."""

    def __init__(self, spark=None, settings: Settings | None = None):
        self._done: dict[str, int] = {}  # rows read per query id since its current run started
        self._followed: dict[str, tuple] = {}  # query name -> (stage, EventLog) of the run that started it
        self._counts: dict[tuple, dict] = {}  # (query id, batch id) -> what the batch counted itself
        self._watermarks: dict[str, str] = {}  # query id -> its own event-time watermark, last told
        self._names: dict[str, str] = {}  # query id -> name (a termination event carries the id only)
        self._spark, self._settings = spark, settings
        self._lock = threading.Lock()

    def follow(self, name: str, stage: str, events) -> None:
        with self._lock:
            self._followed[name] = (stage, events)

    def add_counts(self, key: str, batch_id: int, counts: dict[str, int], event_watermark: str | None = None) -> None:
        with self._lock:
            pending = self._counts.setdefault((key, batch_id), {})
            for k, v in counts.items():
                pending[k] = pending.get(k, 0) + v
            if event_watermark:
                self._watermarks[key] = event_watermark

    def onQueryStarted(self, event):
        log.debug("query %s started (id %s, run %s)", event.name, event.id, event.runId)
        with self._lock:
            self._done[str(event.id)] = 0
            self._names[str(event.id)] = event.name or str(event.id)

    def onQueryProgress(self, event):
        p = event.progress
        data = json.loads(p.json)
        d = p.durationMs or {}
        lag = source_lag(data)
        key = str(p.id)
        with self._lock:  # rows read since this run of the query started: a backfill's progress
            done = self._done[key] = self._done.get(key, 0) + p.numInputRows
            counts = self._counts.pop((key, p.batchId), {})
            followed = self._followed.get(p.name)
            watermark = self._watermarks.get(key)
        log.info("%s batch %d: %d rows in, %.0f rows/s, %d ms (addBatch %d ms); %d rows this run, %s behind",
                 p.name, p.batchId, p.numInputRows, p.processedRowsPerSecond or 0.0, d.get("triggerExecution", 0),
                 d.get("addBatch", 0), done, lag if lag != "-" else "nothing")
        log.debug("%s batch %d durations: %s", p.name, p.batchId, d)
        if followed:
            stage, events = followed
            try:
                events.add(stage, event_row(data, stage, counts, watermark,
                                            self._spark.sparkContext.applicationId if self._spark else ""))
            except Exception as e:  # noqa: BLE001 - the log never breaks a query
                log.warning("event log: batch %d of %s not logged: %s", p.batchId, p.name, e)

    def onQueryIdle(self, event):
        pass

    def onQueryTerminated(self, event):
        name = self._names.get(str(event.id), str(event.id))
        if event.exception:
            log.error("query %s failed: %s", name, event.exception.splitlines()[0])
        else:
            log.debug("query %s terminated", name)


_PY_ERROR = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b(?::.*)?$", re.M)


# First lines that only say "something below failed": the root cause says more.
_GENERIC = ("Exception thrown in awaitResult", "Job aborted due to stage failure", "[STREAM_FAILED]")


def short_error(exc: BaseException) -> str:
    """The one line that says what went wrong in a (possibly Java) streaming exception."""
    text = str(getattr(exc, "_desc", None) or getattr(exc, "desc", None) or exc)
    trace = str(getattr(exc, "_stackTrace", None) or "")
    causes = re.findall(r"^Caused by: (.+)$", trace, re.M)
    cause = getattr(exc, "_cause", None)
    while cause is not None and len(causes) < 20:  # pyspark's converted cause chain
        desc = str(getattr(cause, "_desc", "") or "").strip()
        if desc:
            causes.append(desc.splitlines()[0])
        cause = getattr(cause, "_cause", None)
    hint = ""
    if any(m in "\n".join([text, trace, *causes]) for m in ("KAFKA_DATA_LOSS", "OffsetOutOfRangeException")):
        hint = (" - records were deleted from Kafka (retention) before they were read; set "
                "LAKEHOUSE_FAIL_ON_DATA_LOSS=false to skip them and go on")
    if "Traceback (most recent call last)" in text:  # a Python error raised in foreachBatch
        py = text[text.index("Traceback (most recent call last)"):].split("\n\tat ")[0]
        raised = [m.group(0) for m in _PY_ERROR.finditer(py)]
        if raised and not raised[-1].startswith("py4j.protocol.Py4JJavaError"):
            return raised[-1][:400] + hint
        # a Spark job started in foreachBatch failed: its Java root cause says what happened
        java = re.findall(r"^(?:Caused by: )?((?:[a-z_][\w$]*\.)+[A-Z][\w$]*(?:Exception|Error)\b.*)$", text, re.M)
        if java:
            return java[-1].strip()[:400] + hint
    first = next((line.strip() for line in text.splitlines()
                  if line.strip() and not line.strip().startswith("at ") and line.strip() != "=== Streaming Query ==="),
                 text.strip())
    if causes and (not first or any(first.startswith(g) for g in _GENERIC)):
        first = causes[-1].strip()
    return first[:400] + hint


def stop_quietly(query) -> None:
    """Stop a query that is being stopped on purpose (a signal, the end of a run, another query's
    failure): an error it raises while stopping (Spark interrupts its stream thread, which can fail
    half-way through planning a batch) is not the run's failure, so it is a warning, not an exit 1."""
    if not query.isActive:
        return
    try:
        query.stop()
    except Exception as e:  # noqa: BLE001 - see above
        log.warning("query %s: %s while stopping (nothing lost: a restart resumes from its checkpoint)",
                    query.name, short_error(e))


def await_all(spark, queries: list, poll_seconds: float = 0.5) -> None:
    """Wait until every query ends; stop all on SIGINT/SIGTERM or as soon as one fails."""
    stop = threading.Event()

    def _handler(signum, _frame):
        log.warning("signal %d received: stopping %d queries", signum, len(queries))
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _handler)
    try:
        while not stop.is_set():
            # Each query's isActive is read once: a query that ends between two reads (a failing
            # availableNow batch) must not look "still running" to the failure check and "ended" to
            # the all-done check, or its error is lost and the run exits 0. Spark records the
            # exception before the query stops being active.
            ended = [q for q in queries if not q.isActive]
            failed = [q for q in ended if q.exception() is not None]
            if failed:
                q = failed[0]
                err = short_error(q.exception())
                for other in queries:
                    stop_quietly(other)
                raise StreamFailedError(f"query {q.name} failed: {err}")
            if len(ended) == len(queries):
                return
            stop.wait(poll_seconds)
        for q in queries:
            stop_quietly(q)
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
