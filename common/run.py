"""One run of the pipeline: what lives as long as it, made by the runner and handed to each
stage's ``queries`` (``RunContext``), instead of module globals or attributes on the Spark session.

* the session, the settings and the run's options (trigger, sink);
* the stages the run owns (``ownership.Ownership``: one process per stage, fenced commits), given
  back when it ends (None: a test's own writer, which owns nothing);
* the progress listener (``listener.ProgressLogger``), registered for the run, and the event log
  it feeds (``eventlog.EventLog``), flushed when the run ends;
* the compactor of the tables the run writes (``tables.Compactor``), waited for when it ends;
* what a stage opened for the run's length (``on_close``: gold's Kafka producer), closed when it ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from common.eventlog import EventLog
from common.listener import ProgressLogger
from common.settings import Settings
from common.streams import StreamOptions
from common.tables import Compactor

log = logging.getLogger("lakehouse.run")


@dataclass
class RunContext:
    spark: Any
    settings: Settings
    options: StreamOptions | None = None
    ownership: Any = None                    # ownership.Ownership of the run's stages (None: nothing fenced)
    compactor: Compactor = field(default_factory=Compactor)
    listener: ProgressLogger | None = None   # None: batches' own counts go nowhere
    events: EventLog | None = None           # None: no event log (``--sink console``, a test's writer)
    closers: list = field(default_factory=list)  # ``on_close``: called when the run ends, last first
    # a standby building its stages' queries before it owns them (``app.runner.prepare``): a stage
    # then changes nothing (``tables.ensure_table(write=False)``) and says what is not ready
    preparing: bool = False

    def __post_init__(self):
        self.compactor.fence = self.fence

    @classmethod
    def open(cls, spark, settings: Settings, options: StreamOptions, ownership=None) -> "RunContext":
        """A run of the pipeline: its listener registered, its event log open (Delta sinks)."""
        run = cls(spark, settings, options, ownership=ownership, listener=ProgressLogger(spark, settings))
        if options.sink == "delta":
            run.events = EventLog(settings, fence=run.fence,
                                  epoch=ownership.epoch if ownership is not None else None)
        spark.streams.addListener(run.listener)
        return run

    @property
    def delta(self) -> bool:
        """The run writes the lake (not ``--sink console``)."""
        return self.options is None or self.options.sink == "delta"

    def follow(self, flows, stage: str) -> None:
        """Log the progress of ``flows`` (one stage's) to the event log; called before they start,
        so that no batch can finish unlogged."""
        if self.listener is not None and self.events is not None:
            for f in flows:
                self.listener.follow(f.name, stage, self.events)

    def count(self, query_id: str, batch_id: int, event_watermark: str | None = None, **counts) -> None:
        """A batch's own counts, logged with its progress (``batches.BatchContext.count``)."""
        if self.listener is not None:
            self.listener.add_counts(query_id, batch_id, counts, event_watermark)

    def fence(self, stage: str | None = None) -> None:
        """Before a commit: raise ``ownership.OwnershipLost`` unless the run still owns ``stage``
        (None: every stage it runs)."""
        if self.ownership is not None:
            self.ownership.fence(stage)

    def on_close(self, close) -> None:
        """Call ``close()`` when the run ends (after its queries stopped)."""
        self.closers.append(close)

    def close(self, started=()) -> None:
        """The run ends (its queries stopped): what its stages opened closed, the event log written,
        every compaction under way finished (the tables' writer until it ends), the stages given back,
        the listener removed."""
        while self.closers:
            try:
                self.closers.pop()()
            except Exception as e:  # noqa: BLE001 - the rest of the run's end still happens
                log.warning("at the run's end: %s", str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
        try:
            if self.events is not None:
                self.events.close(started)
            if not self.compactor.wait():
                log.warning("a compaction was still running when the run ended; the next run redoes it")
        finally:
            if self.ownership is not None:
                self.ownership.release()
            if self.listener is not None:
                try:
                    self.spark.streams.removeListener(self.listener)
                except Exception as e:  # noqa: BLE001 - a session already stopped
                    log.debug("progress listener not removed: %s", e)
