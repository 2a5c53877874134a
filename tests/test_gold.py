"""Gold end to end on the real stack, against a plain-Python recomputation from the ledger."""

from __future__ import annotations

import io
import json
import os
import signal

import pytest

from app import dataflow
from silver import customers
from common.clients import minio_client
from common.settings import s3_location
from serving.native import NativeLake
from app.runner import run
from gold.transforms import TVA_RATE
from tests.checks import HALF_CENT, check_gold, check_late, check_published
from tests.helpers import (
    committed_rows,
    kill_hard,
    lakehouse,
    produce_to,
    read_topic,
    start_stage_process,
    wait_until,
)
from tests.oracle import SilverOracle

pytestmark = pytest.mark.stack
FAULTS = dict(duplicate_pct=10, late_pct=5, malformed_pct=5)


def test_gold_equals_recomputation_and_enrichment_follows_customer_updates(spark, lake, tmp_path):
    first = tmp_path / "customers1.csv"
    first.write_text("customer_id,nom,ville,segment\nCUST-001,Alice Martin,Paris,VIP\nCUST-002,Bob Dupont,Lyon,Standard\n")
    customers.load(spark, lake, first)
    ledger_path = tmp_path / "ledger.jsonl"
    ledger1 = produce_to(lake, ledger_path, 300, seed=21, customers=4, **FAULTS)
    run(("bronze", "silver", "gold"), lake, "availableNow", spark=spark)
    check_gold(spark, lake, ledger1)

    # a customer changes city and a new one appears: later batches see it, earlier rows stay
    second = tmp_path / "customers2.csv"
    second.write_text("customer_id,nom,ville,segment\nCUST-001,Alice Martin,Bordeaux,VIP\n"
                      "CUST-003,Claire Leroy,Marseille,Premium\n")
    customers.load(spark, lake, second)
    ledger = produce_to(lake, ledger_path, 200, seed=22, customers=4, **FAULTS)
    run(("bronze", "silver", "gold"), lake, "availableNow", spark=spark)
    late = check_late(spark, lake, ledger)  # the second batch is judged by the first one's watermark
    check_gold(spark, lake, ledger, late)

    valid1 = set(SilverOracle(ledger1, lake, late).valid_orders())
    valid = SilverOracle(ledger, lake, late).valid_orders()
    enriched = {r.order_id: r for r in spark.read.format("delta").load(lake.table_path("gold", "orders_enriched")).collect()}
    assert set(enriched) == set(valid)
    for oid, r in enriched.items():
        cust = valid[oid]["customer_id"]
        assert r.total == valid[oid]["total"]
        if cust == "CUST-001":
            assert r.ville == ("Paris" if oid in valid1 else "Bordeaux")
        elif cust == "CUST-002":
            assert r.nom == "Bob Dupont" and r.customer_known
        elif cust == "CUST-003":
            assert r.customer_known == (oid not in valid1)
        else:
            assert not r.customer_known and r.nom is None

    # publication: every valid order on commandes-enrichies once (read_committed), with its TVA
    published = {}
    for m in read_topic(lake, lake.topic_enriched):
        v = json.loads(m.value)
        assert m.key.decode() == v["customer_id"]
        assert v["order_id"] not in published, v
        published[v["order_id"]] = v
    assert set(published) == set(valid)
    for oid, v in published.items():
        assert v["tva"] == pytest.approx(valid[oid]["total"] * TVA_RATE, abs=HALF_CENT)


def test_gold_sigkill_replay_counts_nothing_twice(spark, lake, tmp_path):
    customers.load(spark, lake)
    ledger_path = tmp_path / "ledger.jsonl"
    produce_to(lake, ledger_path, 300, seed=31, **FAULTS)
    run(("bronze", "silver"), lake, "availableNow", spark=spark)
    proc = start_stage_process(lake, "gold", "processingTime=1 second", tmp_path / "gold1.log")
    try:
        path = lake.table_path("gold", "customer_order_kpis_open")
        wait_until(lambda: committed_rows(lake, path) > 0 or proc.poll() is not None, 300, "gold to commit a batch")
        assert proc.poll() is None, (tmp_path / "gold1.log").read_text()[-3000:]
        produce_to(lake, ledger_path, 200, seed=32, **FAULTS)
        run(("bronze", "silver"), lake, "availableNow", spark=spark)
    finally:
        kill_hard(proc)
    ledger = produce_to(lake, ledger_path, 100, seed=33, **FAULTS)
    run(("bronze", "silver", "gold"), lake, "availableNow", spark=spark)  # gold's restart, in this process
    check_gold(spark, lake, ledger)
    check_published(spark, lake)  # wherever the kill hit: each order once for read_committed


def test_run_all_serves_sql_to_a_second_process_and_stops_on_sigterm(spark, lake, tmp_path, capfd):
    lake = lake.with_overrides(event_log_interval="1 hour")  # every event row comes from the stop's last flush
    customers.load(spark, lake)
    produce_to(lake, tmp_path / "ledger.jsonl", 100, seed=41)
    proc = start_stage_process(lake, "all", "processingTime=2 seconds", tmp_path / "all.log")
    try:
        # the orders were just sent: their windows stay open (orders' watermark: 5 minutes)
        path = lake.table_path("gold", "customer_order_kpis_open")
        wait_until(lambda: committed_rows(lake, path) > 0 or proc.poll() is not None, 400, "run all to reach gold")
        assert proc.poll() is None, (tmp_path / "all.log").read_text()[-3000:]
        # this test's process is the second one: `lakehouse sql` in it, while run all writes
        sql = lakehouse(lake, "sql", "--format", "json", "SELECT count(*) AS n FROM gold.customer_order_kpis_live",
                        capfd=capfd)
        assert sql.returncode == 0, sql.stderr[-2000:]
        assert json.loads(sql.stdout.strip().splitlines()[-1])["n"] >= 1
        log = (tmp_path / "all.log").read_text()
        assert log.count("  started ") == len(dataflow.graph(lake))  # every query of the graph listed
        # to the whole process group, as `systemctl stop` or `kill -- -<pgid>` do: the JVM gets it
        # too, and must leave the stopping to the Python driver
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, (tmp_path / "all.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            kill_hard(proc)
    # an orderly stop: the event log's last buffered rows were appended, one row per batch committed
    from common.checkpoints import _batch_numbers
    from common.fs import Fs

    events = NativeLake(lake).rows("ops.pipeline_events", order_by="query, batch_id")
    for flow in dataflow.graph(lake):
        committed = _batch_numbers(Fs(spark), flow.checkpoint, "commits")
        assert committed, flow.name
        assert [e["batch_id"] for e in events if e["query"] == flow.name] == committed, \
            (flow.name, (tmp_path / "all.log").read_text()[-3000:])


def test_one_failed_query_stops_the_app_with_its_error_and_a_non_zero_exit(spark, lake, tmp_path):
    """A checkpoint offset file that is whole but names no real offsets (the start-up guard,
    ``checkpoints.check_readable``, passes it) makes one of gold's queries fail once running: the
    app reports it and stops all."""
    produce_to(lake, tmp_path / "ledger.jsonl", 100, seed=51)
    run(("bronze", "silver", "gold"), lake, "availableNow", spark=spark)
    client = minio_client(lake)
    bucket, prefix = s3_location(dataflow.flow(lake, "gold_kpis").checkpoint + "/offsets/")
    offsets = [o.object_name for o in client.list_objects(bucket, prefix=prefix + "/")
               if o.object_name.rsplit("/", 1)[-1].isdigit()]
    assert offsets
    last = max(offsets, key=lambda n: int(n.rsplit("/", 1)[-1]))
    sources = len(dataflow.flow(lake, "gold_kpis").sources)
    broken = b"v1\n{}" + b'\n{"bogus":1}' * sources
    client.put_object(bucket, last, io.BytesIO(broken), len(broken))
    log = tmp_path / "gold.log"
    proc = start_stage_process(lake, "gold", "processingTime=1 second", log)  # the process's exit is the point
    try:
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            kill_hard(proc)
    text = log.read_text()
    assert rc == 1, text[-3000:]
    assert "error: query gold_kpis failed: " in text, text[-3000:]
    assert text.count("  started ") == len(dataflow.flows(lake, "gold"))  # the others had started, and were stopped


def test_two_drivers_on_one_checkpoint_cannot_both_publish(lake):
    """Two publishers of one query (same checkpoint, so the same transactional id): the one started
    last fences the other, whose next transaction fails with one line; the ledger (batch ids in the
    transactions) lets neither send a batch twice, and read_committed sees each record once."""
    from gold.publish import PublicationFencedError, Publisher

    records = [(f"CUST-{i:03d}", json.dumps({"order_id": f"ORD-{b}-{i}"})) for b in range(3) for i in range(4)]
    batch = lambda b: records[4 * b:4 * b + 4]  # noqa: E731
    first = Publisher(lake, lake.topic_enriched, "gold_orders", "query-1")
    try:
        assert first.publish(0, batch(0)) == 4
        second = Publisher(lake, lake.topic_enriched, "gold_orders", "query-1")  # a second driver starts
        try:
            assert not second.pending(0) and second.pending(1)  # the ledger: batch 0 is out
            with pytest.raises(PublicationFencedError, match="another driver now publishes for this checkpoint"):
                first.publish(1, batch(1))
            assert second.publish(0, batch(0)) == 0  # a replay of batch 0: not sent again
            assert second.publish(1, batch(1)) == 4
        finally:
            second.close()
        other = Publisher(lake, lake.topic_enriched, "gold_orders", "query-2")  # a new checkpoint: its own ledger
        try:
            assert other.pending(0)
        finally:
            other.close()
    finally:
        first.close()
    got = [json.loads(m.value)["order_id"] for m in read_topic(lake, lake.topic_enriched)]
    assert sorted(got) == sorted(json.loads(v)["order_id"] for _, v in batch(0) + batch(1))
    # the fenced driver's batch 1 did not even reach the log: the broker refused its transaction
    assert len(read_topic(lake, lake.topic_enriched, committed=False)) == 8
