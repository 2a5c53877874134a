"""The progress listener: one log line per micro-batch, and each followed query's progress, with
the batch's own counts, handed to its run's event log (``common.eventlog``). One per run
(``common.run.RunContext``), registered when the run starts and removed when it ends.
"""

from __future__ import annotations

import json
import logging
import threading

from common.eventlog import event_row, offsets_total
from common.settings import Settings

log = logging.getLogger("lakehouse.streams")


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


def progress_event(jprogress):
    """pyspark's ``QueryProgressEvent`` of a Java ``StreamingQueryProgress``, through its JSON."""
    from pyspark.sql.streaming.listener import QueryProgressEvent

    return QueryProgressEvent.fromJson({"progress": json.loads(jprogress.json())})


class _ProgressAsJson:
    """The Java side of a ``StreamingQueryListener`` (py4j calls it on Spark's listener thread) that
    hands a progress event over as its JSON, one py4j call, instead of pyspark's field-by-field
    copy: that copy iterates a dozen Java maps and lists, and the end of each iteration is a Java
    exception that pyspark's error conversion inspects through ~28 failing class lookups (a scan of
    every jar on the class path each): 25 ms for one map; a three-source stateful query's event
    228-253 ms against 1-2 ms (``python -m bench.listener``), and 8.5 % of the driver JVM's CPU
    samples on the listener thread alone at 200 orders/s (bench/README.md, 2026-12-05). The other
    events are rare and pass through pyspark's own conversion."""

    def __init__(self, pylistener):
        from pyspark.sql.streaming.listener import JStreamingQueryListener

        self._default = JStreamingQueryListener(pylistener)
        self.pylistener = pylistener

    def onQueryStarted(self, jevent):
        self._default.onQueryStarted(jevent)

    def onQueryProgress(self, jevent):
        self.pylistener.onQueryProgress(progress_event(jevent.progress()))

    def onQueryIdle(self, jevent):
        self._default.onQueryIdle(jevent)

    def onQueryTerminated(self, jevent):
        self._default.onQueryTerminated(jevent)

    class Java:
        implements = ["org.apache.spark.sql.streaming.PythonStreamingQueryListener"]


class ProgressLogger(_make_listener_base()):  # type: ignore[misc]
    """Logs one line per micro-batch (query, batch id, input rows, rows/s, duration) and hands each
    followed query's progress, with the batch's own counts, to its run's event log
    (``common.eventlog``: the history ``lakehouse status`` reads)."""

    @property
    def _jlistener(self):
        """What ``spark.streams.addListener`` registers: pyspark's wrapper around ``_ProgressAsJson``
        (the same object for ``removeListener``)."""
        if getattr(self, "_jlistenerobj", None) is None:
            from pyspark import SparkContext

            self._jlistenerobj = SparkContext._jvm.PythonStreamingQueryListenerWrapper(_ProgressAsJson(self))
        return self._jlistenerobj

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

    def add_counts(self, key: str, batch_id: int, counts: dict[str, int | str], event_watermark: str | None = None) -> None:
        with self._lock:
            pending = self._counts.setdefault((key, batch_id), {})
            for k, v in counts.items():
                pending[k] = v if isinstance(v, str) else pending.get(k, 0) + v  # a text (JSON) is not summed
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
                                            self._spark.sparkContext.applicationId if self._spark else "",
                                            events.epoch(stage)))
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


