"""The pipeline's event log, as data: one row per micro-batch per query in Delta tables of the
lake, queryable as ``ops.pipeline_events`` (``lakehouse sql``, the Thrift server, the native
reader) and read by ``lakehouse status``.

Each stage logs to its own table, ``<lake>/ops/pipeline_events_<stage>``: a stage runs in one
application at a time (its ownership, ``common.ownership``), so every table keeps a single writing application,
as Delta's S3 log store requires; ``ops.pipeline_events`` is the view over them. An application
buffers its rows and appends them (delta-rs, ``deltars.append``: no Spark job) in one commit per
table every LAKEHOUSE_EVENT_LOG_INTERVAL (30 seconds) and when its run ends, so the log costs one
small commit per stage and interval, not one per batch. A SIGKILL loses at most the rows of the
last interval (the batches themselves are safe in their checkpoints and tables).

A row: the query, its stage, ids, batch id, start and end time, duration and the addBatch part
(every phase in ``durations``, JSON), input rows and rates, records (Kafka) or files (Delta) still
behind the source, Spark's watermark and silver's per-source event-time watermarks, state rows
and memory, the batch's data-quality counts: duplicates dropped, quarantined, dropped by a rule, late;
silver's schema drift: records with fields the schema does not know (``rescued``) and, per source,
their names, the fields every record lacked and the columns added (``schema_drift``, JSON);
and for gold_orders, event -> gold latency: from the Kafka timestamp of the batch's median and
oldest order to the batch's commit.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timedelta, timezone

from common import deltars
from common.batches import run_parallel
from common.settings import OPS, Settings, interval_seconds

log = logging.getLogger("lakehouse.eventlog")

VIEW = "pipeline_events"
COLUMNS = (
    ("query", "string"), ("stage", "string"), ("query_id", "string"), ("run_id", "string"), ("batch_id", "bigint"),
    ("started_at", "timestamp"), ("ended_at", "timestamp"), ("duration_ms", "bigint"), ("add_batch_ms", "bigint"),
    ("durations", "string"), ("input_rows", "bigint"), ("input_rows_per_second", "double"),
    ("processed_rows_per_second", "double"), ("records_behind", "bigint"), ("files_behind", "bigint"),
    ("sources", "string"), ("watermark", "timestamp"), ("event_watermark", "string"), ("state_rows", "bigint"),
    ("state_memory_bytes", "bigint"), ("duplicates", "bigint"), ("quarantined", "bigint"), ("dropped", "bigint"),
    ("late", "bigint"), ("rescued", "bigint"), ("schema_drift", "string"), ("event_to_gold_p50_ms", "bigint"),
    ("event_to_gold_max_ms", "bigint"),
    ("app_id", "string"), ("logged_at", "timestamp"), ("owner_epoch", "bigint"),
)
NAMES = tuple(name for name, _ in COLUMNS)


def arrow_schema():
    """``COLUMNS`` as the Arrow schema of the rows an application appends (through delta-rs)."""
    import pyarrow as pa

    types = {"string": pa.string(), "bigint": pa.int64(), "double": pa.float64(),
             "timestamp": pa.timestamp("us", tz="UTC")}
    return pa.schema([(name, types[kind]) for name, kind in COLUMNS])


# the view's select list: by name, so a stage table whose columns grew in another order still lines up
SELECT_LIST = ", ".join(NAMES)


def select_list(present) -> str:
    """``SELECT_LIST`` over a stage table with the columns ``present``: a column the table does not
    have yet (a stage not run since an upgrade added it; each stage's table gains new columns at
    its own next append) reads as null."""
    have = set(present)
    sql_type = {"string": "VARCHAR"}  # the Spark-free reader's (DataFusion) names of the types
    return ", ".join(name if name in have else f"CAST(NULL AS {sql_type.get(kind, kind.upper())}) AS {name}"
                     for name, kind in COLUMNS)


COUNTS = ("quarantined", "dropped", "late", "rescued")  # what a batch reports itself (``BatchContext.count``)
LATENCY = ("event_to_gold_p50_ms", "event_to_gold_max_ms")  # gold_orders: Kafka timestamp -> its commit


def table_name(stage: str) -> str:
    return f"{VIEW}_{stage}"


def table_path(settings: Settings, stage: str) -> str:
    return settings.table_path(OPS, table_name(stage))


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def offsets_total(value) -> int | None:
    try:
        data = json.loads(value) if isinstance(value, str) else value
        return sum(int(o) for parts in data.values() for o in parts.values())
    except (TypeError, ValueError, AttributeError):
        return None


def _duplicates(progress: dict, counts: dict, operators: list) -> int:
    """Records a batch's dedup dropped: those read minus those the batch went on with, when the
    query says how many it went on with (silver's ``checked``), otherwise Spark's own
    ``numDroppedDuplicateRows`` (it was 3x in silver while a write re-ran the dedup, 51 for 17;
    with the batch computed once it is exact, 147 for 147: ``batches.computed_once``)."""
    if "checked" in counts:
        return int(progress.get("numInputRows") or 0) - int(counts["checked"])
    return sum(int((op.get("customMetrics") or {}).get("numDroppedDuplicateRows", 0)) for op in operators)


def event_row(progress: dict, stage: str, counts: dict, event_watermark: str | None, app_id: str,
              owner_epoch: int | None = None) -> tuple:
    """One row of the log from a query's progress (``StreamingQueryProgress.json``, parsed);
    ``owner_epoch``: the epoch of the stage's ownership the batch ran under (``common.ownership``: a
    takeover raises it, so the log shows every change of owner and when)."""
    durations = progress.get("durationMs") or {}
    started = _time(progress.get("timestamp"))
    behind, files = None, None
    for src in progress.get("sources") or []:
        latest, end = offsets_total(src.get("latestOffset")), offsets_total(src.get("endOffset"))
        if latest is not None and end is not None:
            behind = (behind or 0) + latest - end
        outstanding = (src.get("metrics") or {}).get("numFilesOutstanding")
        if outstanding is not None:
            files = (files or 0) + int(outstanding)
    operators = progress.get("stateOperators") or []
    sources = [{k: src.get(k) for k in ("description", "startOffset", "endOffset", "numInputRows")}
               for src in progress.get("sources") or []]
    return (
        progress.get("name"), stage, progress.get("id"), progress.get("runId"), int(progress.get("batchId", -1)),
        started, started + timedelta(milliseconds=durations.get("triggerExecution", 0)) if started else None,
        int(durations.get("triggerExecution", 0)), int(durations.get("addBatch", 0)), json.dumps(durations),
        int(progress.get("numInputRows") or 0), float(progress.get("inputRowsPerSecond") or 0.0),
        float(progress.get("processedRowsPerSecond") or 0.0), behind, files, json.dumps(sources),
        _time((progress.get("eventTime") or {}).get("watermark")), event_watermark,
        sum(int(op.get("numRowsTotal") or 0) for op in operators) if operators else None,
        sum(int(op.get("memoryUsedBytes") or 0) for op in operators) if operators else None,
        _duplicates(progress, counts, operators),
        *(int(counts.get(k, 0)) for k in COUNTS), counts.get("schema_drift"), *(counts.get(k) for k in LATENCY), app_id,
        datetime.now(timezone.utc), owner_epoch,
    )


class EventLog:
    """The buffer of one application's event rows, appended every interval and when closed."""

    def __init__(self, settings: Settings, fence=None, epoch=None):
        self._settings = settings
        self._appends: dict[str, int] = {}  # stage -> appends since this log started (its compactions)
        self._fence = fence  # before each append: raises once another process owns the stage
        self.epoch = epoch or (lambda stage: None)  # stage -> the epoch of its ownership (the rows' owner_epoch)
        self._rows: dict[str, list[tuple]] = {}  # stage -> rows not written yet
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._stop = threading.Event()
        self._interval = interval_seconds(settings.event_log_interval)
        self._thread = threading.Thread(target=self._loop, name="event-log", daemon=True)
        self._thread.start()

    def add(self, stage: str, row: tuple) -> None:
        with self._lock:
            self._rows.setdefault(stage, []).append(row)
            self._seen[row[2]] = max(self._seen.get(row[2], -1), row[4])  # query id -> its last batch logged

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def flush(self) -> None:
        """Append the buffered rows, one commit per stage table, side by side. A failed append keeps
        its rows for the next try (storage briefly down); the log never stops a query."""
        def append(stage: str, rows: list) -> None:
            try:
                if self._fence is not None:
                    self._fence(stage)
                path = table_path(self._settings, stage)
                import pyarrow as pa

                # by delta-rs: a few rows, no Spark job (a Delta-Spark append of them took 0.5-1 s
                # of a run's end, and a job every interval); a log written by an older version gains
                # the new columns
                deltars.append(pa.Table.from_pylist([dict(zip(NAMES, r)) for r in rows], schema=arrow_schema()),
                               path, self._settings)
                # compacted here, by delta-rs too, after the append and before the next: the table keeps
                # one writer (an OPTIMIZE by Delta-Spark's compactor thread could commit beside a delta-rs
                # append, outside the JVM's per-table lock, and S3 would keep only one of the two)
                self._appends[stage] = n = self._appends.get(stage, 0) + 1
                if self._settings.compact_every > 0 and n % self._settings.compact_every == 0:
                    deltars.compact(path, self._settings)
            except Exception as e:  # noqa: BLE001 - best effort, retried at the next interval
                log.warning("event log: could not append %d rows for %s (%s); retrying in %.0f s",
                            len(rows), stage, str(e).splitlines()[0][:200], self._interval)
                with self._lock:
                    self._rows[stage] = rows + self._rows.get(stage, [])

        with self._flushing:
            with self._lock:
                pending, self._rows = self._rows, {}
            run_parallel([lambda stage=stage, rows=rows: append(stage, rows) for stage, rows in pending.items()])

    def close(self, queries=(), wait_s: float = 10.0) -> None:
        """Stop the interval writer and append what is buffered, once the last batch of each of
        ``queries`` (stopped) has reached the log: Spark delivers progress events asynchronously.
        A trigger that found nothing to do is reported as a progress (the next batch id, no
        ``addBatch``) but sends no progress event: the wait is for the last batch that ran (waiting
        for an idle trigger cost every run with nothing new 10 s)."""
        self._stop.set()
        deadline = time.monotonic() + wait_s
        for q in queries:
            ran = [p for p in (q.recentProgress or []) if "addBatch" in (p.get("durationMs") or {})]
            last = ran[-1].get("batchId") if ran else None
            while last is not None and self._seen.get(str(q.id), -1) < last and time.monotonic() < deadline:
                time.sleep(0.05)
        self.flush()
