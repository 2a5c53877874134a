"""Which KPI windows are complete: gold closes a window by the watermark of the silver data it has
read in full.

Silver judges lateness per source (``silver.watermarks``) and states, in the tag of every commit to
a source's table (``orders``, ``order_items``, ``logs``, ``metrics``), the watermark the next batch
is judged by: from then on a record at or behind it goes to ``silver.late_records``, never to the
table. So once gold has read a silver table through version ``v``, every row that will ever land
in a window ending at or before the watermark tagged on ``v`` (or on the last tagged commit before
it: OPTIMIZE and DDL commits carry none) is already in gold's hands: the window is complete.

How far gold has read a table is in its own checkpoint: Spark writes the end offset of micro-batch
``n`` to ``offsets/<n>`` before running it, one line per source; a Delta source's offset is
(``reservoirVersion``, ``index``, ``isStartingVersion``), and a version is read in full once the
offset has moved past it (Delta 4: ``index`` -1 at the next version; a version cut by
``maxBytesPerTrigger`` leaves a file index inside it). While the initial snapshot of a new
checkpoint is being read nothing is complete. A replayed batch reads the same offsets and the
same commits, so it closes the same windows.

Windows still open after the last data (the end of a one-shot run, a source gone quiet) stay
open until later records of that source move silver's watermark past them.
"""

from __future__ import annotations

import json
import logging

from common.fs import Fs
from common.tables import commit_metadata, table_id

log = logging.getLogger("lakehouse.gold")

SEARCH_BACK = 50  # commits looked at below a version for its watermark (a few maintenance commits in between)


def read_through(offset: dict) -> int | None:
    """The last version of a Delta table a micro-batch ending at Delta source offset ``offset`` has
    read in full (None: none yet, e.g. inside the initial snapshot)."""
    if offset.get("isStartingVersion", False):
        return None
    version = int(offset["reservoirVersion"]) - 1
    return version if version >= 0 else None


class SilverWatermarks:
    """Per silver table gold reads, the watermark of what a micro-batch of gold's query has read in
    full (epoch ms), from the query's offsets log and the tables' commit tags."""

    def __init__(self, spark, checkpoint: str, tables: dict[str, str]):
        """``tables``: silver table -> path (the query's sources)."""
        self.checkpoint = checkpoint
        self.paths = tables
        self.by_id = {table_id(spark, path): table for table, path in tables.items()}
        self._last: dict[str, tuple[int, int | None]] = {}  # table -> (version, its watermark), last answer

    def at(self, spark, batch_id: int) -> dict[str, int | None]:
        """Silver table -> the watermark micro-batch ``batch_id`` may close windows by (None: none)."""
        found: dict[str, int | None] = {t: None for t in self.paths}
        text = Fs(spark).read_text(f"{self.checkpoint}/offsets/{batch_id}") or ""
        for line in text.splitlines()[2:]:
            try:
                offset = json.loads(line)
            except ValueError:
                continue
            table = self.by_id.get(offset.get("reservoirId")) if isinstance(offset, dict) else None
            if table is not None:
                through = read_through(offset)
                found[table] = None if through is None else self._watermark(spark, table, through)
        return found

    def _watermark(self, spark, table: str, version: int) -> int | None:
        """The watermark tagged on ``version`` of ``table``, or on the last tagged commit before it."""
        known_version, known = self._last.get(table, (-1, None))
        for v in range(version, max(-1, version - SEARCH_BACK), -1):
            if v == known_version:
                break
            tag = commit_metadata(spark, self.paths[table], v)
            if tag and "writer" in tag:  # silver's commit (OPTIMIZE and DDL commits are not tagged)
                known = tag.get("watermark_ms")  # None: a commit from before silver tagged its watermark
                break
        else:
            if known_version < version - SEARCH_BACK:
                known = None
        self._last[table] = (version, known)
        return None if known is None else int(known)
