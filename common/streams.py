"""Every readStream and writeStream of the lakehouse goes through this module.

Trigger, checkpoint, sink and listener choices are made here once:

* ``read_kafka`` / ``read_delta`` - the two streaming sources;
* ``QuerySpec`` / ``start_all`` - a query to start (a flow of the graph: ``QuerySpec.of``) and the
  start of a stage's queries, each with its own name and checkpoint, its checkpoint claimed first;
* ``short_error`` / ``stop_quietly`` / ``await_all`` - a failure's root cause in one line, and
  waiting for a set of queries, stopping them all on SIGINT/SIGTERM or when one fails.

A ``foreachBatch``'s writes are in ``common.batches``, the progress listener in ``common.listener``,
what lives as long as a run in ``common.run``.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable

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
    # gold_orders publishes each batch to Kafka; False only for a scratch run that must not write
    # to a real topic (the standby's warm-up, ``app.standby``): the payload is built, not sent
    publish: bool = True

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


# How long the broker may hold a fetch of Spark's Kafka consumer that finds too little data
# (Kafka's default: 500 ms). Spark reads an offset range it knows exists, yet measured here each
# partition's read still waited about that long: a one-shot read of 3 topics x 3 partitions with
# 150 records each took 4.4 s, 0.5 s with 10 ms; a live query over the same topics in one task,
# addBatch 540-1,270 ms against 260-350 ms (bench/README.md, 2026-12-05). A consumer at a
# partition's end asks again no sooner than Spark polls, so a short wait costs no busy loop.
FETCH_MAX_WAIT_MS = "10"


def kafka_options(settings: Settings, topics: Iterable[str] | None = None, role: str = "bronze",
                  **extra: str) -> dict[str, str]:
    """Spark's Kafka options from settings: the brokers, the identity of Kafka role ``role`` and,
    for a source (``topics``), the subscription, the headers and LAKEHOUSE_FAIL_ON_DATA_LOSS;
    ``extra`` adds or overrides."""
    from common.clients import kafka_jaas

    options = {"kafka.bootstrap.servers": settings.kafka_bootstrap_servers,
               **{f"kafka.{k}": v for k, v in kafka_jaas(settings, role).items()}}
    if topics is not None:
        options.update({"subscribe": ",".join(topics), "includeHeaders": "true",
                        "failOnDataLoss": str(settings.fail_on_data_loss).lower(),
                        "kafka.fetch.max.wait.ms": FETCH_MAX_WAIT_MS})
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


def ensure_topics_exist(settings: Settings, topics: Iterable[str], role: str = "reader") -> None:
    """Each of ``topics`` exists (and Kafka role ``role`` may see it), or one line naming it."""
    from common.clients import kafka_admin

    admin = kafka_admin(settings, timeout_ms=5000, role=role)
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
    from common.tables import operations

    operation = operations(spark, path)
    latest = max(operation)
    for version in sorted((v for v, op in operation.items() if op in _EMPTYING), reverse=True):
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


@dataclass(frozen=True)
class QuerySpec:
    """One streaming query to start: its DataFrame, name, checkpoint and sink. Every sink of the
    pipeline is a ``foreachBatch`` function (``common.batches``); ``--sink console`` replaces it
    with the console (debugging: no checkpoint)."""

    df: Any
    name: str
    checkpoint: str
    options: StreamOptions
    foreach_batch: Callable | None = None
    output_mode: str = "append"
    stateful: bool = False
    signature: dict | None = None  # the settings its state depends on (``checkpoints.check_signature``)
    # a query a standby built before the takeover (``RunContext.preparing``): True when what it was
    # built from has changed since, and it must be built again (None: nothing it read can change)
    stale: Callable[[], bool] | None = None

    @classmethod
    def of(cls, flow, df, options: StreamOptions, foreach_batch: Callable | None = None) -> "QuerySpec":
        """The query of a flow of the declared graph (``common.pipeline.Flow``). A flow's own
        trigger replaces a live run's (``processingTime``); one-shot runs keep theirs."""
        if flow.trigger and options.trigger.kind == "processingTime":
            options = StreamOptions(Trigger.parse(flow.trigger), options.sink)
        return cls(df, flow.name, flow.checkpoint, options, foreach_batch, stateful=flow.stateful,
                   signature=flow.signature_dict())

    @property
    def to_console(self) -> bool:
        return self.options.sink == "console"


def start_all(run, specs: list[QuerySpec]) -> list:
    """Start a stage's queries after checking every checkpoint first (its signature, its files:
    ``checkpoints.claim``; no other live copy: the run's ownership of the stage, taken before): a
    refused checkpoint stops the stage before any of its queries has run."""
    from common.checkpoints import claim

    for spec in specs:
        if not spec.to_console:
            if spec.foreach_batch is None:
                raise ValueError(f"query {spec.name}: every sink of the pipeline is a foreachBatch function")
            claim(run.spark, spec.checkpoint, spec.name, {"query": spec.name, **(spec.signature or {})})
    return [_start(spec) for spec in specs]


def _start(spec: QuerySpec):
    check_trigger(spec.options.trigger, "console" if spec.to_console else "foreachBatch", spec.name, spec.stateful)
    writer = spec.df.writeStream.queryName(spec.name).outputMode(spec.output_mode)
    if spec.to_console:
        writer = writer.format("console").option("truncate", "false").option("numRows", "20")
    else:
        writer = writer.option("checkpointLocation", spec.checkpoint).foreachBatch(spec.foreach_batch)
    writer = _apply_trigger(writer, spec.options.trigger)
    sc = spec.df.sparkSession.sparkContext
    sc.setLocalProperty("spark.scheduler.pool", spec.name)  # the query's own pool: FAIR between queries
    try:
        query = writer.start()
    finally:
        sc.setLocalProperty("spark.scheduler.pool", None)
    log.debug("started query %s (id %s)", spec.name, query.id)
    return query


_PY_ERROR = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b(?::.*)?$", re.M)


# First lines that only say "something below failed": the root cause says more.
_GENERIC = ("Exception thrown in awaitResult", "Job aborted due to stage failure", "[STREAM_FAILED]")


_S3_DENIED = re.compile(r"java\.nio\.file\.AccessDeniedException: ((?:s3a://)?[^\s:]+)")


def s3_denied_path(text: str) -> str | None:
    """The path S3A's ``AccessDeniedException`` in ``text`` names, as ``s3a://bucket/key`` (S3A names
    some by their key alone: the bucket is then the one of the ``s3a://`` paths in ``text`` that the
    key is under)."""
    denied = _S3_DENIED.search(text)
    if not denied:
        return None
    key = denied.group(1)
    if key.startswith("s3a://"):
        return key
    for path in re.findall(r"s3a://[^\s'\"`,;)]+", text):
        bucket, _, under = path.rstrip(".")[len("s3a://"):].partition("/")
        if key.startswith(under.rstrip("/")):
            return f"s3a://{bucket}/{key}"
    return key


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
    denied = s3_denied_path("\n".join([text, trace, *causes]))
    if denied:  # S3A's AccessDeniedException: which path, and which of the process's keys was refused
        from common.clients import s3_denied

        return s3_denied(denied)
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


# Delta's streaming source stops a query whose table's schema changed after the query was
# planned, a column added included ("additive schema changes MUST be taken into account"): a
# restart plans it again with the new schema and resumes from its checkpoint. A query planned
# before a change its checkpoint has already read past (a standby's, built before the takeover:
# ``app.runner.prepare``) fails its first batch with Spark's "Invalid batch: <planned columns> !=
# <the source's>" assertion instead, before writing anything: the same cure.
SCHEMA_CHANGED = ("DELTA_SCHEMA_CHANGED", "assertion failed: Invalid batch: ")
MAX_RESTARTS = 5  # per query and run: a schema change that a restart does not cure fails the run


def schema_changed(exc: BaseException) -> bool:
    """``exc`` says the source table's schema changed since the query was planned (a restart cures it)."""
    text = "\n".join(str(x or "") for x in (exc, getattr(exc, "_desc", None), getattr(exc, "_stackTrace", None)))
    return any(marker in text for marker in SCHEMA_CHANGED)


def _await_one(running: list, seconds: float) -> None:
    """Wait up to ``seconds`` for the first of ``running`` to end: returns as soon as it does (a
    one-shot run's last query is seen to end at once, not at the next poll). A failure is not
    raised here: the caller reads each query's exception."""
    try:
        running[0].awaitTermination(seconds)
    except Exception as e:  # noqa: BLE001 - the query failed: reported by await_all's next look
        log.debug("query %s ended with an error: %s", running[0].name, str(e).splitlines()[0][:200])


def await_all(spark, queries: list, poll_seconds: float = 0.5, restart: Callable | None = None,
              check: Callable | None = None) -> None:
    """Wait until every query ends; stop all on SIGINT/SIGTERM, as soon as one fails, or when
    ``check()`` raises (the run's ownership lost: its error is the run's). A query
    stopped by a schema change of the Delta table it reads (``schema_changed``) is started again by
    ``restart(query) -> {old query: new query}`` (its stage's queries, planned again), at most
    ``MAX_RESTARTS`` times."""
    stop = threading.Event()
    restarts: dict[str, int] = {}

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
            if check is not None:
                try:
                    check()
                except Exception:
                    for other in queries:
                        stop_quietly(other)
                    raise
            failed = [q for q in ended if q.exception() is not None]
            if failed and restart is not None and schema_changed(failed[0].exception()) \
                    and restarts.get(failed[0].name, 0) < MAX_RESTARTS:
                q = failed[0]
                restarts[q.name] = restarts.get(q.name, 0) + 1
                log.warning("query %s: %s; restarting it with the table's new schema (it resumes from its "
                            "checkpoint: nothing lost, nothing twice)", q.name, short_error(q.exception()))
                replaced = restart(q)
                queries = [replaced.get(x, x) for x in queries]
                continue
            if failed:
                q = failed[0]
                err = short_error(q.exception())
                for other in queries:
                    stop_quietly(other)
                if check is not None:  # a query that failed because another process took its stage over
                    check(confirm=True)
                raise StreamFailedError(f"query {q.name} failed: {err}")
            if len(ended) == len(queries):
                return
            _await_one([q for q in queries if q not in ended], poll_seconds)
        for q in queries:
            stop_quietly(q)
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
