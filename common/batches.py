"""A ``foreachBatch`` function's writes: exactly once (``BatchContext``), side by side
(``run_parallel``), from a micro-batch computed once (``computed_once``).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable

log = logging.getLogger("lakehouse.streams")


class BatchContext:
    """What a ``foreachBatch`` function of a declared query needs to write its tables exactly once,
    and nothing but the tables its flow declares (``Flow.sinks``: a write to any other raises).

    Every commit is tagged (``tables.commit_tag``) with the writer's id - the query, the
    checkpoint's own query id (read once from the checkpoint) and the table - and the batch id.
    Within one run Spark executes each batch id once, in increasing order; only the first batch a
    run executes can be a replay of one the previous run was writing when it stopped. So the first
    write of a run to each table looks up the last batch this writer committed there (the tag of
    its last commit; when the table holds none from this writer, Delta's txnAppId too, for commits
    of earlier, txn-only versions of the project) and skips a batch already there; later writes
    need no lookup (a txnAppId lookup on every commit reconstructed the table's state: ~0.7 s per
    table per batch). A new checkpoint gets a new query
    id, so its batch 0 is never mistaken for a replay of the old checkpoint's batch 0; and a run
    that started on a new checkpoint has nothing to look up (no commit carries the new id yet),
    which spares a new lake's first batch one history read and one state reconstruction per table.
    Make one per query run (``of``, in the stage's ``queries``). This relies on one running copy per
    stage (its ownership, ``common.ownership``, fenced before every commit): two live copies would
    each append every batch. Every ``compact_every`` commits to a table (LAKEHOUSE_COMPACT_EVERY), the run's
    compactor compacts it (``tables.Compactor``).
    """

    def __init__(self, flow, run, query_id: str | None = None, new_checkpoint: bool = False):
        self.flow, self.run = flow, run
        self.settings = run.settings
        self._paths = flow.sink_paths(run.settings)  # layer.table -> path: what it may write
        self._query_id = query_id
        self._new = new_checkpoint
        self._last: dict[str, int] = {}  # table -> highest batch id known committed (after the first write)
        self._replaced: dict[str, int] = {}  # table -> commits of this run by ``replace``
        self._versions: dict[str, int] = {}  # table -> its latest version, as ``read_replaced`` found it

    @classmethod
    def of(cls, run, flow) -> "BatchContext":
        """The context of one run of ``flow``'s query, made before the query starts (when the
        checkpoint can still be seen to be new)."""
        from common.checkpoints import is_new

        return cls(flow, run, new_checkpoint=is_new(run.spark, flow.checkpoint))

    def path(self, table: str) -> str:
        """The path of ``table`` (``layer.table``), a sink the flow declares."""
        try:
            return self._paths[table]
        except KeyError:
            raise ValueError(f"query {self.flow.name} writes {table}, which its flow does not declare "
                             f"(its tables: {', '.join(self._paths)})") from None

    def query_id(self, spark=None) -> str:
        """The checkpoint's own query id (Spark's query id)."""
        if self._query_id is None:
            from common.checkpoints import query_id

            self._query_id = query_id(spark or self.run.spark, self.flow.checkpoint)
        return self._query_id

    def app_id(self, spark, table: str) -> str:
        # the table's own name, as in every commit tag written so far (a restart finds them)
        return f"{self.flow.name}:{self.query_id(spark)}:{table.split('.', 1)[1]}"

    def _should_write(self, spark, table: str, batch_id: int) -> tuple[str, str, bool] | None:
        """(path, app id, ask Delta's txnAppId too) for a batch the table does not hold yet, else None:
        Delta's check costs a state reconstruction of the table (~0.7 s here), needed only at a run's
        first write to a table that holds no tagged commit of this writer."""
        from common.tables import last_committed_batch

        path = self.path(table)
        app_id = self.app_id(spark, table)
        first = self._looks_up(table)
        if first:
            self._last[table] = last_committed_batch(spark, path, app_id, latest=self._versions.pop(table, None))
        self._last.setdefault(table, -1)
        if batch_id <= self._last[table]:
            log.info("%s batch %d: already in %s (a replay after a restart), skipped", self.flow.name, batch_id,
                     table)
            return None
        return path, app_id, first and self._last[table] < 0

    def _looks_up(self, table: str) -> bool:
        """The next write to ``table`` is this run's first to it on an old checkpoint: it looks up
        the last batch the table holds."""
        return table not in self._last and not self._new

    def read_replaced(self, table: str):
        """Every row of ``table``, which this query writes with ``replace`` (a ``pyarrow.Table``, read
        by delta-rs as it was written: ``deltars.read``). Its version is kept for the run's first
        look-up (``holds``, ``replace``), which then needs no Delta-Spark snapshot of the table."""
        from common import deltars

        version, rows = deltars.read(self.path(table), self.settings)
        if self._looks_up(table):
            self._versions[table] = version
        return rows

    def holds(self, spark, table: str, batch_id: int) -> bool:
        """The table already holds this batch (a replay after a restart)."""
        return self._should_write(spark, table, batch_id) is None

    def append(self, df, table: str, batch_id: int, merge_schema: bool = False, **tag) -> None:
        """Append the batch's rows for ``table`` (``layer.table``) unless the table already holds
        this batch; ``tag`` goes into the commit's tag; ``merge_schema``: the rows' new columns are
        added to the table (Delta schema evolution)."""
        from common.tables import append_batch

        todo = self._should_write(df.sparkSession, table, batch_id)
        if todo:
            path, app_id, txn = todo
            with self._committing(table, batch_id):
                append_batch(df, path, app_id, batch_id, txn=txn, merge_schema=merge_schema, **tag)
            self.run.compactor.committed(df.sparkSession, path, self.settings.compact_every)

    def replace(self, rows, table: str, batch_id: int, **tag) -> None:
        """Replace the rows of the small table ``table`` by the batch's ``rows`` (a
        ``pyarrow.Table`` on the driver, written by delta-rs: ``deltars.replace``) unless it already
        holds this batch; every ``compact_every`` commits, delete the files its replaced rows left
        (``deltars.vacuum``)."""
        from common import deltars
        from common.tables import commit_tag

        todo = self._should_write(self.run.spark, table, batch_id)
        if todo:
            path, app_id, txn = todo
            with self._committing(table, batch_id):
                deltars.replace(rows, path, self.settings, commit_tag(app_id, batch_id, **tag),
                                txn=(app_id, batch_id) if txn else None)
            self._replaced[table] = self._replaced.get(table, 0) + 1
            every = self.settings.compact_every
            if every and self._replaced[table] % every == 0:
                try:
                    log.info("%s: %d replaced files of %s deleted", self.flow.name, deltars.vacuum(path, self.settings),
                             table)
                except Exception as e:  # noqa: BLE001 - housekeeping: the next one catches up
                    log.warning("%s: the replaced files of %s not deleted this time: %s", self.flow.name, table,
                                str(e).splitlines()[0][:200])

    def count(self, batch_id: int, event_watermark: str | None = None, **counts) -> None:
        """Batch ``batch_id``'s own counts (``eventlog.COUNTS``, ``eventlog.LATENCY``) and the query's
        event-time watermark when it keeps one (silver: per source), for the run's event log."""
        self.run.count(self.query_id(), batch_id, event_watermark, **counts)

    @contextmanager
    def _committing(self, table: str, batch_id: int):
        """Around the commit of ``batch_id`` to ``table``: known committed after it, unknown if it
        failed (the commit may have landed: looked up again at the next write). Not made at all
        once another process owns the stage (``RunContext.fence``)."""
        self.run.fence(self.flow.stage)
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


