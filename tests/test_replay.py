"""`lakehouse replay bronze` on the real stack: from a time it adds exactly the records after it
that bronze lacked, from offsets the rest; nothing is ever in bronze twice."""

from __future__ import annotations

import json

import pytest

from app import dataflow
from bronze.job import replay
from app.runner import run
from tests.helpers import lakehouse, produce_to

pytestmark = pytest.mark.stack


def _coords(spark, path: str) -> list[tuple]:
    return sorted((r.partition, r.offset) for r in spark.read.format("delta").load(path).collect())


def test_replay_adds_exactly_what_bronze_lacks(spark, lake, tmp_path, capfd):
    topic, bronze = lake.topic_orders, dataflow.flow(lake, "bronze")
    ledger = produce_to(lake, tmp_path / "ledger.jsonl", 90, seed=9, topics=[topic])
    run(("bronze",), lake, "availableNow", spark=spark)
    path = lake.table_path("bronze", lake.bronze_table_for(topic))
    every = {(r.partition, r.offset): r.timestamp for r in spark.read.format("delta").load(path).collect()}
    assert sorted(every) == sorted((r["partition"], r["offset"]) for r in ledger)

    spark.sql(f"DELETE FROM delta.`{path}` WHERE offset % 3 = 0")  # bronze lost a third of its rows
    lost = {c for c in every if c[1] % 3 == 0}
    cut = sorted(every.values())[len(every) // 2]
    after = {c for c in lost if every[c] >= cut}
    assert after and lost - after

    counts = replay(spark, lake, bronze, from_time_ms=int(cut.timestamp() * 1000))  # (pyspark: naive local time)
    assert counts[topic][1:] == (len(after), 0)
    assert set(_coords(spark, path)) == set(every) - (lost - after)
    assert len(_coords(spark, path)) == len(set(_coords(spark, path)))  # nothing twice

    start = {topic: {str(p): 0 for p in {c[0] for c in every}}}
    proc = lakehouse(lake, "replay", "bronze", "--from-offsets", json.dumps(start), capfd=capfd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{topic}: 90 records in Kafka from that point; appended {len(lost - after)} that bronze lacked" \
        in proc.stdout
    assert _coords(spark, path) == sorted(every)  # whole again, once
    assert replay(spark, lake, bronze, from_offsets=start)[topic] == (90, 0, 0)  # a second replay adds nothing

    # records bronze's own query has not read yet are left to it: no record twice when it runs
    newer = produce_to(lake, tmp_path / "ledger.jsonl", 30, seed=10, topics=[topic])
    assert replay(spark, lake, bronze, from_offsets=start)[topic] == (120, 0, 30)
    run(("bronze",), lake, "availableNow", spark=spark)
    assert _coords(spark, path) == sorted((r["partition"], r["offset"]) for r in newer)
