"""Fault-injection suite: the real stack, the generator's ledger as the truth.

After each fault the pipeline is restarted plainly (no manual repair) and run to completion;
then bronze must hold every Kafka offset exactly once, silver no duplicate key and exactly the
ledger's valid records, and every gold table its plain-Python recomputation (tests/checks.py).

Sleeps in this file time the *faults* (when to kill, how long a service stays down); no test
sleeps to wait for a stream: those waits poll under a deadline.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from common import customers
from common.errors import CheckpointError, StreamFailedError
from devstack.generator import read_ledger
from common import pipeline
from common.runner import run
from common.clients import kafka_admin, minio_client
from gold.transforms import KPIS
from tests.checks import _coords, check_bronze, check_gold, check_pipeline
from tests.conftest import ROOT, settings_env
from tests.helpers import (
    delta_count,
    kill_hard,
    produce_to,
    run_stage_to_completion,
    start_stage_process,
    wait_until,
)

pytestmark = [pytest.mark.stack, pytest.mark.reliability]
FAULTS = {"duplicate_pct": 10, "late_pct": 5, "malformed_pct": 5}
LIVE = "processingTime=1 second"
STAGES = ("bronze", "silver", "gold")


class Producer(threading.Thread):
    """The generator at a steady rate in the background; its error, if any, fails the test."""

    def __init__(self, settings, ledger, count: int, rate: float, seed: int):
        super().__init__(daemon=True)
        self.args = (settings, ledger, count, seed)
        self.rate, self.error = rate, None

    def run(self):
        settings, ledger, count, seed = self.args
        try:
            produce_to(settings, ledger, count, seed=seed, rate=self.rate, **FAULTS)
        except BaseException as e:  # noqa: BLE001 - reported by finish()
            self.error = e

    def finish(self, timeout: float = 600) -> None:
        self.join(timeout)
        assert not self.is_alive(), "producer did not finish"
        assert self.error is None, f"producer failed: {self.error!r}"


def _tail(path) -> str:
    return path.read_text(errors="replace")[-3000:]


def _start_live(settings, stage, log, spark, table):
    """Start a stage in its own process and wait until it has committed to ``table``."""
    proc = start_stage_process(settings, stage, LIVE, log)
    wait_until(lambda: delta_count(spark, table) > 0 or proc.poll() is not None, 300, f"{stage} to commit")
    assert proc.poll() is None, _tail(log)
    return proc


def _drain(settings, tmp_path, name="final") -> None:
    """The plain restart: every stage to completion (availableNow), in one application."""
    run_stage_to_completion(settings, "all", tmp_path / f"{name}.log", timeout=900)


# 1 -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_of_each_stage_at_random_moments(spark, lake, tmp_path):
    rng = random.Random(20261122)
    customers.load(spark, lake)
    ledger = tmp_path / "ledger.jsonl"
    produce_to(lake, ledger, 150, seed=101, **FAULTS)
    tables = {"bronze": lake.table_path("bronze", lake.bronze_table_for(lake.topic_orders)),
              "silver": lake.table_path("silver", "orders"),
              "gold": lake.table_path("gold", "customer_order_kpis")}
    procs, logs = {}, {}
    for stage in STAGES:  # each stage needs the tables of the one before it
        logs[stage] = tmp_path / f"{stage}-0.log"
        procs[stage] = _start_live(lake, stage, logs[stage], spark, tables[stage])
    producer = Producer(lake, ledger, 1500, rate=10, seed=102)
    producer.start()
    kills = []
    try:
        for i in range(10):
            stage = STAGES[i] if i < 3 else rng.choice(STAGES)
            time.sleep(rng.uniform(4, 25))  # a random moment of the stage's life
            assert procs[stage].poll() is None, f"{stage} died on its own:\n{_tail(logs[stage])}"
            kill_hard(procs[stage])
            kills.append(stage)
            logs[stage] = tmp_path / f"{stage}-{i + 1}.log"
            procs[stage] = start_stage_process(lake, stage, LIVE, logs[stage])
        producer.finish()
    finally:
        for p in procs.values():
            if p.poll() is None:
                kill_hard(p)
    assert len(kills) == 10 and set(kills) == set(STAGES)
    _drain(lake, tmp_path)
    check_pipeline(spark, lake, read_ledger(ledger))


# 2 -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_kafka_broker_hard_restart_while_producing_and_consuming(spark, lake, stack, tmp_path):
    customers.load(spark, lake)
    ledger = tmp_path / "ledger.jsonl"
    produce_to(lake, ledger, 100, seed=201, **FAULTS)
    log = tmp_path / "bronze.log"
    bronze = _start_live(lake, "bronze", log, spark, lake.table_path("bronze", lake.bronze_table_for(lake.topic_orders)))
    producer = Producer(lake, ledger, 400, rate=20, seed=202)
    try:
        producer.start()
        time.sleep(5)  # mid-production
        stack.kill("kafka")  # SIGKILL: no clean shutdown
        time.sleep(5)  # broker down
        stack.up()
        producer.finish()
    finally:
        if bronze.poll() is None:  # it may have survived the outage, or failed: both are fine
            kill_hard(bronze)
    _drain(lake, tmp_path)
    check_pipeline(spark, lake, read_ledger(ledger))


# 3 -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_minio_down_for_30_seconds_then_a_plain_restart_recovers(spark, lake, stack, tmp_path):
    customers.load(spark, lake)
    ledger = tmp_path / "ledger.jsonl"
    produce_to(lake, ledger, 100, seed=301, **FAULTS)
    log = tmp_path / "all.log"
    app = _start_live(lake, "all", log, spark, lake.table_path("gold", "customer_order_kpis"))
    producer = Producer(lake, ledger, 300, rate=10, seed=302)
    try:
        producer.start()
        time.sleep(3)
        stack.kill("minio")
        time.sleep(30)  # the outage
        stack.up()
        producer.finish()
        # the app either failed loudly during the outage or rode it out; never silently half-dead
        if app.poll() is not None:
            assert app.returncode != 0 and "error: query" in log.read_text(), _tail(log)
    finally:
        if app.poll() is None:
            app.send_signal(signal.SIGTERM)
            try:
                app.wait(timeout=120)
            except subprocess.TimeoutExpired:
                kill_hard(app)
    _drain(lake, tmp_path)
    check_pipeline(spark, lake, read_ledger(ledger))


# 4 -------------------------------------------------------------------------------------------
def test_retention_overrun_fails_loudly_and_the_documented_option_skips(spark, lake, tmp_path):
    from kafka import TopicPartition

    orders = [lake.topic_orders]
    ledger = tmp_path / "ledger.jsonl"
    read = produce_to(lake, ledger, 100, seed=401, topics=orders)
    run(("bronze",), lake, "availableNow", spark=spark)
    lost = produce_to(lake, ledger, 100, seed=402, topics=orders)[len(read):]
    # retention overrun: Kafka deletes records bronze has not read yet
    ends = {}
    for r in lost:
        ends[r["partition"]] = max(ends.get(r["partition"], 0), r["offset"] + 1)
    admin = kafka_admin(lake)
    try:
        admin.delete_records({TopicPartition(lake.topic_orders, p): o for p, o in ends.items()})
    finally:
        admin.close()
    after = produce_to(lake, ledger, 50, seed=403, topics=orders)[len(read) + len(lost):]
    before = _coords(spark, lake)
    with pytest.raises(StreamFailedError, match=r"query bronze failed: .*LAKEHOUSE_FAIL_ON_DATA_LOSS=false"):
        run(("bronze",), lake, "availableNow", spark=spark)
    assert _coords(spark, lake) == before  # nothing written by the failed run
    run(("bronze",), lake.with_overrides(fail_on_data_loss=False), "availableNow", spark=spark)
    check_bronze(spark, lake, read + after)  # the deleted records are skipped, everything else once


# 5 -------------------------------------------------------------------------------------------
def test_second_copy_on_the_same_checkpoint_is_refused(spark, lake, tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    produce_to(lake, ledger, 100, seed=501)
    log = tmp_path / "first.log"
    orders = lake.table_path("bronze", lake.bronze_table_for(lake.topic_orders))
    first = _start_live(lake, "bronze", log, spark, orders)
    try:
        before = _coords(spark, lake)
        second = subprocess.run([sys.executable, "-m", "common.cli", "run", "bronze", "--trigger", LIVE],
                                env=settings_env(lake), cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert second.returncode == CheckpointError.exit_code, second.stderr[-3000:]
        assert "is in use by application" in second.stderr and "stop that copy first" in second.stderr
        assert len(_coords(spark, lake)) >= len(before)  # the first copy's output is intact
        full = produce_to(lake, ledger, 100, seed=502)
        wait_until(lambda: len(_coords(spark, lake)) == len(full) or first.poll() is not None, 300,
                   "the first copy to ingest everything")
        assert first.poll() is None, _tail(log)
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 0, _tail(log)
    check_bronze(spark, lake, full)


# 6 -------------------------------------------------------------------------------------------
def test_incompatible_change_on_an_old_checkpoint_fails_at_start(spark, lake, tmp_path, monkeypatch):
    import silver.transforms

    ledger = produce_to(lake, tmp_path / "ledger.jsonl", 150, seed=601, **FAULTS)
    run(STAGES, lake, "availableNow", spark=spark)

    def versions():
        return {t: spark.sql(f"DESCRIBE HISTORY delta.`{t}`").agg({"version": "max"}).collect()[0][0]
                for t in [lake.table_path("gold", k.name) for k in KPIS] + [lake.table_path("silver", "orders")]}

    before = versions()
    produce_to(lake, tmp_path / "ledger.jsonl", 50, seed=602, **FAULTS)  # new input the refused runs must not touch
    run(("bronze",), lake, "availableNow", spark=spark)
    with pytest.raises(CheckpointError, match=r"gold_kpis cannot restart .*host_metrics_window was '30 seconds', "
                                              r"now '1 minute'"):
        run(("gold",), lake.with_overrides(host_window="1 minute"), "availableNow", spark=spark)
    original = silver.transforms.dedup_columns
    monkeypatch.setattr(silver.transforms, "dedup_columns",
                        lambda kind: ("order_id", "customer_id") if kind == "orders" else original(kind))
    with pytest.raises(CheckpointError, match=r"silver cannot restart .*dedup_key_orders"):
        run(("silver",), lake, "availableNow", spark=spark)
    assert not spark.streams.active
    assert versions() == before  # no query of the refused stages ran a batch
    monkeypatch.undo()
    run(("silver", "gold"), lake, "availableNow", spark=spark)
    check_gold(spark, lake, read_ledger(tmp_path / "ledger.jsonl"))
    assert ledger  # the first 150 are part of what was checked


# 7 -------------------------------------------------------------------------------------------
def test_batch_replayed_after_its_writes_committed_counts_once(spark, lake, tmp_path):
    """The crash window of foreachBatch: the batch's appends committed to Delta, the checkpoint did
    not. Removing the last commit marker makes Spark replay that batch; the run's first write finds
    the batch's tag in each table and skips it (``streams.BatchContext``)."""
    ledger = produce_to(lake, tmp_path / "ledger.jsonl", 200, seed=61, **FAULTS)
    run(STAGES, lake, "availableNow", spark=spark)
    client = minio_client(lake)
    removed = []
    for flow in pipeline.flows(lake, "gold"):
        prefix = flow.checkpoint.removeprefix(f"s3a://{lake.bucket}/") + "/commits/"
        commits = sorted((o.object_name for o in client.list_objects(lake.bucket, prefix=prefix)
                          if o.object_name.rsplit("/", 1)[-1].isdigit()), key=lambda n: int(n.rsplit("/", 1)[-1]))
        assert commits, prefix
        client.remove_object(lake.bucket, commits[-1])
        removed.append(commits[-1])
    run(("gold",), lake, "availableNow", spark=spark)
    check_gold(spark, lake, ledger)
    for name in removed:  # the replayed batches committed again
        assert client.stat_object(lake.bucket, name)


# 8 -------------------------------------------------------------------------------------------
def _event_log_text(spark, path) -> str:
    """An event log file as text; Spark compresses them (zstd by default): read through the JVM's zstd."""
    if path.suffix != ".zstd":
        return path.read_text(errors="replace")
    jvm = spark.sparkContext._jvm
    stream = jvm.com.github.luben.zstd.ZstdInputStream(jvm.java.io.FileInputStream(str(path)))
    try:
        return jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()


def test_no_s3_secret_in_logs_event_logs_or_printed_config(spark, lake, tmp_path):
    secret = lake.s3_secret_key
    assert len(secret) >= 8
    produce_to(lake, tmp_path / "ledger.jsonl", 50, seed=801)
    events = tmp_path / "events"
    events.mkdir()
    env = {**settings_env(lake), "LAKEHOUSE_SPARK_EVENT_LOG_DIR": f"file://{events}"}
    outputs = []
    for args in (["config"], ["run", "bronze", "--trigger", "availableNow"], ["status"],
                 ["sql", "SELECT count(*) FROM bronze." + lake.bronze_table_for(lake.topic_orders)]):
        r = subprocess.run([sys.executable, "-m", "common.cli", *args], env=env, cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, (args, r.stderr[-2000:])
        outputs.append(r.stdout + r.stderr)
    event_logs = [_event_log_text(spark, p) for p in events.rglob("*") if p.is_file()]  # v2: a folder per app
    assert event_logs and any("spark.hadoop.fs.s3a.secret.key" in e for e in event_logs)  # the key is there...
    texts = outputs + event_logs
    for folder in (ROOT / ".stack" / "logs", ROOT / ".cache" / "spark-conf"):
        texts += [p.read_text(errors="replace") for p in folder.glob("*") if p.is_file()]
    leaks = [t[max(0, t.find(secret) - 80): t.find(secret)] for t in texts if secret in t]
    assert not leaks, f"S3 secret printed after: {leaks}"  # ...its value never is
    assert any("redacted" in json.dumps(e) for e in event_logs)
