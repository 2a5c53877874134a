"""The in-app compactor spreads its tables' compactions over time (issue 35: nine tables written in
every batch all reached LAKEHOUSE_COMPACT_EVERY in the same batch and were compacted back to back)."""

from __future__ import annotations

from collections import Counter

from common.tables import Compactor


class _Recording(Compactor):
    def __init__(self):
        super().__init__()
        self.done: list[tuple[int, str]] = []
        self.batch = -1

    def _compact(self, spark, path: str) -> None:  # the OPTIMIZE itself is the stack tests' business
        self.done.append((self.batch, path))


def _run(tables: int, every: int, batches: int) -> _Recording:
    c = _Recording()
    for batch in range(batches):
        c.batch = batch
        for t in range(tables):
            c.committed(None, f"s3a://lake/silver/t{t}", every)
        assert c.wait(5)
    return c


def test_tables_written_in_every_batch_are_compacted_one_batch_at_a_time_every_n_commits():
    c = _run(tables=14, every=100, batches=300)
    per_batch = Counter(batch for batch, _ in c.done)
    assert per_batch and max(per_batch.values()) == 1, per_batch  # never two tables in one batch
    per_table = Counter(path for _, path in c.done)
    assert len(per_table) == 14 and set(per_table.values()) <= {2, 3}, per_table
    for t in range(14):  # each table every 100 of its commits after its first
        batches = [b for b, p in c.done if p == f"s3a://lake/silver/t{t}"]
        assert all(b2 - b1 == 100 for b1, b2 in zip(batches, batches[1:])), (t, batches)
    first = sorted(b for b, p in c.done if b < 100)  # the first round spread over the interval
    assert len(first) == 14 and first[-1] - first[0] >= 80, first


def test_a_small_interval_still_compacts_every_table_and_zero_never_does():
    c = _run(tables=9, every=3, batches=6)
    assert Counter(p for _, p in c.done) == Counter({f"s3a://lake/silver/t{t}": 2 for t in range(9)})
    assert _run(tables=3, every=0, batches=10).done == []
