"""Silver's event-time watermarks, one per source, kept beside the query's checkpoint.

A record is late when its event time is at or behind its source's watermark: the greatest valid
event time of that source in the earlier micro-batches, minus the source's delay
(``LAKEHOUSE_WATERMARK_<SOURCE>``). Spark keeps a single watermark for a query with several
sources (the smallest of theirs, and 0 while one of them has not sent anything since the query
started), so silver's one query over three sources keeps its own per source: after each
micro-batch, the greatest valid event time per source so far goes to
``<checkpoint>/event_time/<batch id>`` (a small JSON file, written before the batch's tables, like
Spark's offsets log). Batch N is judged by the file of batch N - 1; a batch replayed after a crash
reads the same file and judges every record as the first attempt did. Only valid event times
count: quarantined records never move a watermark.

Every commit of a batch to a source's table (``orders`` and ``order_items``, ``logs``,
``metrics``) carries in its tag the source's watermark after the batch (``watermark_ms``): a
reader of the table knows that no row at or behind it will ever be added. Gold closes its KPI
windows by it (``gold.windows``).

Spark's own watermark is not used for this: it only bounds the dedup operator's state, and it
follows processing time (``silver.transforms.dedupe``), so the operator never discards a record
as late; every late record reaches the silver job, which writes it to ``silver.late_records``.

Deterministic: for a given sequence of micro-batches, which records are late (a replay of a batch
after a crash reads the same file). Not deterministic: the micro-batch boundaries themselves (they
depend on when each batch starts and on LAKEHOUSE_MAX_BYTES_PER_TRIGGER), so the same records
read in other batches can be judged otherwise, as in Spark.
"""

from __future__ import annotations

from common.fs import Fs

RETAIN = 100  # files kept (Spark keeps 100 batches of its own logs by default)


class EventClock:
    def __init__(self, checkpoint: str, delays_s: dict[str, float]):
        self.dir = f"{checkpoint}/event_time"
        self.delays_ms = {k: int(v * 1000) for k, v in delays_s.items()}
        self._max: dict[str, int] | None = None  # greatest valid event time (ms) per source, through _last
        self._last: int | None = None

    def _path(self, batch_id: int) -> str:
        return f"{self.dir}/{batch_id}"

    def watermarks(self, spark, batch_id: int) -> dict[str, int | None]:
        """Per source, the watermark (epoch ms) batch ``batch_id`` is judged by; None before the
        source's first valid record."""
        if self._last != batch_id - 1:  # the first batch of this run (or a replay): read the log
            prev = Fs(spark).read_json(self._path(batch_id - 1)) if batch_id > 0 else None
            self._max = dict((prev or {}).get("max_event_ms", {}))
            self._last = batch_id - 1
        return {k: (self._max[k] - d if k in self._max else None) for k, d in self.delays_ms.items()}

    def record(self, spark, batch_id: int, batch_max_ms: dict[str, int | None]) -> None:
        """After the batch's aggregation, before its writes: the maxima through ``batch_id``."""
        watermarks = self.watermarks(spark, batch_id)
        for k, v in batch_max_ms.items():
            if v is not None:
                self._max[k] = max(self._max.get(k, v), v)
        fs = Fs(spark)
        fs.write_json(self._path(batch_id), {"batch": batch_id, "max_event_ms": self._max,
                                             "watermark_ms": watermarks})
        self._last = batch_id
        if batch_id % 50 == 0 and batch_id >= RETAIN + 50:
            for old in range(batch_id - RETAIN - 50, batch_id - RETAIN):
                fs.delete(self._path(old))


def describe(watermarks: dict[str, int | None]) -> str:
    """``orders 2026-01-18T10:00:00Z, logs ...`` (``lakehouse status``); '' before any record."""
    from datetime import datetime, timezone

    return ", ".join(f"{k} {datetime.fromtimestamp(v / 1000, tz=timezone.utc):%Y-%m-%dT%H:%M:%SZ}"
                     for k, v in watermarks.items() if v is not None)
