"""Fault-injection suite: the real stack, the generator's ledger as the truth.

After each fault the pipeline is restarted plainly (no manual repair) and run to completion;
then bronze must hold every Kafka offset exactly once, silver no duplicate key and exactly the
ledger's valid records, and every gold table its plain-Python recomputation (tests/checks.py).

Sleeps in this file time the *faults* (when to kill, how long a service stays down); no test
sleeps to wait for a stream: those waits poll under a deadline.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from silver import customers
from common.errors import CheckpointError, StreamFailedError
from common.settings import child_env, s3_location
from devstack.generator import read_ledger
from app import dataflow
from app.runner import plan_refresh, refresh, run
from common.clients import kafka_admin, minio_client
from gold.transforms import KPIS
from tests.checks import _coords, check_bronze, check_gold, check_pipeline, check_published
from tests.conftest import ROOT, settings_env
from tests.helpers import (
    command_lines_with,
    committed_rows,
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
# what a user must never see without --verbose: a Java or Python stack
STACK = re.compile(r"^\s+at \S+\(|^Caused by: |^Traceback \(most recent call last\)", re.M)


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
    wait_until(lambda: committed_rows(settings, table) > 0 or proc.poll() is not None, 300, f"{stage} to commit")
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
              "gold": lake.table_path("gold", "customer_order_kpis_open")}
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
def test_kafka_broker_hard_restart_under_run_all_while_producing(spark, lake, stack, tmp_path):
    customers.load(spark, lake)
    ledger = tmp_path / "ledger.jsonl"
    produce_to(lake, ledger, 100, seed=201, **FAULTS)
    log = tmp_path / "all.log"
    app = _start_live(lake, "all", log, spark, lake.table_path("gold", "orders_enriched"))
    producer = Producer(lake, ledger, 400, rate=20, seed=202)
    try:
        producer.start()
        time.sleep(5)  # mid-production
        stack.kill("kafka")  # SIGKILL: no clean shutdown
        time.sleep(5)  # broker down
        stack.up()
        producer.finish()
        # the app rode the restart out, or stopped with one line; never a stack
        if app.poll() is not None:
            assert app.returncode != 0 and "error: query" in log.read_text(), _tail(log)
        assert not STACK.search(log.read_text()), _tail(log)
    finally:
        if app.poll() is None:
            kill_hard(app)
    _drain(lake, tmp_path)
    check_pipeline(spark, lake, read_ledger(ledger))


# 3 -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_minio_down_for_five_minutes_under_run_all_then_a_plain_restart_recovers(spark, lake, stack, tmp_path):
    customers.load(spark, lake)
    ledger = tmp_path / "ledger.jsonl"
    produce_to(lake, ledger, 100, seed=301, **FAULTS)
    log = tmp_path / "all.log"
    app = _start_live(lake, "all", log, spark, lake.table_path("gold", "customer_order_kpis_open"))
    producer = Producer(lake, ledger, 300, rate=10, seed=302)
    try:
        producer.start()
        time.sleep(3)
        before = len(log.read_text())
        stack.kill("minio")
        time.sleep(300)  # the outage
        stack.up()
        producer.finish()
        during = log.read_text()[before:]
        # what the user saw: no stack, and if the app stopped, one line saying why
        assert not STACK.search(during), during[-3000:]
        if app.poll() is not None:
            errors = [line for line in during.splitlines() if line.startswith("error:")]
            assert app.returncode != 0 and len(errors) == 1 and errors[0].startswith("error: query"), during[-3000:]
    finally:
        if app.poll() is None:
            app.send_signal(signal.SIGTERM)
            try:
                app.wait(timeout=120)
            except subprocess.TimeoutExpired:
                kill_hard(app)
    _drain(lake, tmp_path)
    check_pipeline(spark, lake, read_ledger(ledger))


# 3b ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_of_run_all_twenty_times_at_random_moments_under_load(spark, lake, tmp_path):
    rng = random.Random(20261126)
    customers.load(spark, lake)
    ledger = tmp_path / "ledger.jsonl"
    produce_to(lake, ledger, 100, seed=1101, **FAULTS)
    logs = [tmp_path / "all-0.log"]
    app = _start_live(lake, "all", logs[0], spark, lake.table_path("gold", "orders_enriched"))
    producer = Producer(lake, ledger, 3000, rate=10, seed=1102)  # ~5 minutes of load
    producer.start()
    moments = []
    try:
        for i in range(20):
            moments.append(rng.uniform(2, 30))  # start-up, first batches, steady state
            time.sleep(moments[-1])
            assert app.poll() is None, f"run all died on its own:\n{_tail(logs[-1])}"
            kill_hard(app)
            logs.append(tmp_path / f"all-{i + 1}.log")
            app = start_stage_process(lake, "all", LIVE, logs[-1])
        producer.finish()
    finally:
        if app.poll() is None:
            kill_hard(app)
    assert len(moments) == 20
    _drain(lake, tmp_path)
    check_pipeline(spark, lake, read_ledger(ledger))


# 3c ------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 96 MB ext4 file system on a loop device (needs root, as the CI machine runs)."""
    img, mnt = tmp_path / "disk.img", tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "96M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    r = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot loop-mount a small file system here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fill(path) -> None:
    """Write to ``path`` until the file system is full."""
    chunk = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


@pytest.mark.slow
def test_minio_disk_full_stops_the_pipeline_loudly_and_nothing_is_lost_once_space_returns(
        spark, lake, stack, tmp_path, small_disk):
    from devstack.stack import Stack

    port, bucket = _free_port(), f"diskfull-{lake.topic_orders[:8].lower()}"
    disk = lake.with_overrides(s3_endpoint=f"http://127.0.0.1:{port}", lake_root=f"s3a://{bucket}/lake")
    data = small_disk / "minio"
    data.mkdir()
    minio = subprocess.Popen([str(Stack(lake).minio_binary), "server", str(data), "--quiet", "--address",
                              f"127.0.0.1:{port}", "--console-address", f"127.0.0.1:{_free_port()}"],
                             env=child_env(MINIO_ROOT_USER=lake.s3_access_key, MINIO_ROOT_PASSWORD=lake.s3_secret_key,
                                           MINIO_UPDATE="off"),
                             stdout=open(tmp_path / "minio.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    app = None
    try:
        wait_until(Stack(disk)._minio_health, 60, "the second MinIO")
        Stack(disk).ensure_buckets()  # with the roles' users, as `stack up` makes them
        Stack(disk).ensure_s3_identities()
        for name in disk.buckets:
            spark.sparkContext._jsc.hadoopConfiguration().set(f"fs.s3a.bucket.{name}.endpoint", disk.s3_endpoint)
        ledger = tmp_path / "ledger.jsonl"
        produce_to(disk, ledger, 100, seed=1201, **FAULTS)
        log = tmp_path / "all.log"
        app = _start_live(disk, "all", log, spark, disk.table_path("gold", "orders_enriched"))
        producer = Producer(disk, ledger, 300, rate=10, seed=1202)
        producer.start()
        time.sleep(3)
        before = len(log.read_text())
        filler = small_disk / "filler"
        _fill(filler)
        wait_until(lambda: app.poll() is not None, 300, "the pipeline to stop on the full disk")
        during = log.read_text()[before:]
        errors = [line for line in during.splitlines() if line.startswith("error:")]
        assert app.returncode != 0 and len(errors) == 1, during[-3000:]
        assert re.search(r"(?i)storage|space|disk|full", errors[0]), errors[0]
        assert not STACK.search(during), during[-3000:]
        producer.finish()
        filler.unlink()  # space returns
        _drain(disk, tmp_path)
        check_pipeline(spark, disk, read_ledger(ledger))
    finally:
        if app is not None and app.poll() is None:
            kill_hard(app)
        minio.terminate()
        minio.wait(timeout=30)


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
        second = subprocess.run([sys.executable, "-m", "app.cli", "run", "bronze", "--trigger", LIVE],
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


# 5b ------------------------------------------------------------------------------------------
@pytest.mark.slow  # four `run all` JVMs, three warm-ups at low priority: ~6 min alone (11-13 min in CI with one standby fewer)
def test_a_warm_standby_takes_over_a_paused_then_a_killed_driver_and_the_paused_one_commits_nothing(
        spark, lake, tmp_path):
    """Issue 38 (LAKEHOUSE_OWNERSHIP_EXPIRY 5 s): an active ``run all`` and two ``--standby`` started
    together: one is active, the others wait warm; one standby SIGKILLed -> nothing changes (the
    same owner, its load committed, the other standby still waiting). The active paused (SIGSTOP, when it is idle: a
    pause in the middle of a Delta commit is the limit docs/operations.md states) -> the standby
    takes over once the ownership expired, and runs under load; the paused one resumed (SIGCONT)
    finds its ownership lost and exits (3) without committing; it comes back as the standby; the
    new active killed (SIGKILL) -> taken over at once (same host). Then nothing lost, nothing twice."""
    from deltalake import DeltaTable

    from common.deltars import storage_options, uri
    from common.ownership import read_owner, read_standby

    lake = lake.with_overrides(ownership_expiry="5 seconds", kpi_trigger="processingTime=1 second",
                               event_log_interval="2 seconds")
    customers.load(spark, lake)
    ledger = tmp_path / "ledger.jsonl"
    produce_to(lake, ledger, 100, seed=551, **FAULTS)
    logs = {n: tmp_path / f"{n}.log" for n in ("a", "b", "c", "a2")}
    a = start_stage_process(lake, "all", LIVE, logs["a"])
    b = start_stage_process(lake, "all", LIVE, logs["b"], extra=("--standby",))
    c = start_stage_process(lake, "all", LIVE, logs["c"], extra=("--standby",))
    procs = [a, b, c]
    enriched = lake.table_path("gold", "orders_enriched")
    paths = [p for f in dataflow.graph(lake) for p in f.sink_paths(lake).values()]

    def owners() -> set:
        return {(read_owner(lake, s) or {}).get("pid") for s in STAGES}

    def standing_by(log) -> bool:
        return "waiting to take over" in log.read_text(errors="replace")

    def versions() -> tuple:
        out = []
        for p in paths:
            try:
                out.append(DeltaTable(uri(p), storage_options=storage_options(lake, p)).version())
            except Exception:  # noqa: BLE001 - not created yet
                out.append(-1)
        return tuple(out)

    seen = {"versions": None, "since": 0.0}

    def idle(orders: int) -> bool:  # every valid order in gold, and no table committed to for 3 s
        now, v = time.monotonic(), versions()
        if v != seen["versions"]:
            seen.update(versions=v, since=now)
        return committed_rows(lake, enriched) >= orders and now - seen["since"] >= 3

    def valid_orders() -> int:
        return len({r["order_id"] for r in read_ledger(ledger) if r["topic"] == lake.topic_orders and not r["fault"]})

    try:
        wait_until(lambda: committed_rows(lake, enriched) > 0 or a.poll() is not None, 300, "the active to commit")
        assert a.poll() is None, _tail(logs["a"])
        wait_until(lambda: (standing_by(logs["b"]) and standing_by(logs["c"])) or b.poll() is not None
                   or c.poll() is not None, 600, "the standbys to be warm")
        assert b.poll() is None and c.poll() is None, _tail(logs["b"]) + _tail(logs["c"])
        assert owners() == {a.pid}  # one active: the first
        # a standby SIGKILLed: nothing changes (same owner, the load committed, the other one waits on)
        kill_hard(c)
        load = Producer(lake, ledger, 200, rate=10, seed=552)
        load.start()
        load.finish()
        wait_until(lambda: idle(valid_orders()) or a.poll() is not None, 300, "the active to catch up")
        assert a.poll() is None and b.poll() is None and owners() == {a.pid}, _tail(logs["a"])
        wait_until(lambda: (read_standby(lake, "silver") or {}).get("pid") == b.pid, 30,
                   "status to name the standby still waiting")
        os.killpg(a.pid, signal.SIGSTOP)
        paused_at, before = time.time(), committed_rows(lake, enriched)
        wait_until(lambda: owners() == {b.pid} or b.poll() is not None, 120, "the standby to take over")
        assert b.poll() is None, _tail(logs["b"])
        took = read_owner(lake, "bronze")["took_over"]  # from the paused one, once its last heartbeat had expired
        assert took["pid"] == a.pid and took["at"] >= paused_at and took["at"] - took["heartbeat"] >= 5 - 0.1, took
        load = Producer(lake, ledger, 300, rate=10, seed=553)
        load.start()
        wait_until(lambda: committed_rows(lake, enriched) > before or b.poll() is not None, 300,
                   "the standby to commit as the active")
        os.killpg(a.pid, signal.SIGCONT)
        assert a.wait(timeout=120) == CheckpointError.exit_code, _tail(logs["a"])
        assert "ownership lost to application" in _tail(logs["a"]) and not STACK.search(_tail(logs["a"]))
        assert owners() == {b.pid} and b.poll() is None, _tail(logs["b"])
        a2 = start_stage_process(lake, "all", LIVE, logs["a2"], extra=("--standby",))  # back, as the standby
        procs.append(a2)
        wait_until(lambda: standing_by(logs["a2"]) or a2.poll() is not None, 600, "the comeback to stand by")
        assert owners() == {b.pid} and a2.poll() is None, _tail(logs["a2"])
        kill_hard(b)
        killed = time.monotonic()
        wait_until(lambda: owners() == {a2.pid} or a2.poll() is not None, 60, "the second takeover")
        taken_s = time.monotonic() - killed
        assert taken_s < 5, f"a dead driver on this host is taken over at once, not after its expiry ({taken_s:.1f} s)"
        load.finish()
        produce_to(lake, ledger, 50, seed=554, **FAULTS)  # for the last active
        wait_until(lambda: idle(valid_orders()) or a2.poll() is not None, 300, "the last active to catch up")
        assert a2.poll() is None, _tail(logs["a2"])
        os.killpg(a2.pid, signal.SIGTERM)  # a plain stop: its event log written, its stages given back
        assert a2.wait(timeout=120) == 0, _tail(logs["a2"])
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGCONT)
                kill_hard(p)
    _drain(lake, tmp_path)
    check_pipeline(spark, lake, read_ledger(ledger))
    # the event log says who ran each batch: the first owner (epoch 1), the standby after the
    # pause (2), the comeback after the kill (3); each epoch one application
    from datetime import timezone

    from serving.native import NativeLake

    rows = NativeLake(lake).rows("ops.pipeline_events", order_by="started_at")
    apps: dict = {}
    for r in rows:
        apps.setdefault(r["owner_epoch"], set()).add(r["app_id"])
    assert {1, 2, 3} <= set(apps) and all(len(a) == 1 for a in apps.values()), apps
    assert len({next(iter(a)) for a in apps.values()}) == len(apps)
    utc = [(r["started_at"] if r["started_at"].tzinfo else r["started_at"].replace(tzinfo=timezone.utc)).timestamp()
           for r in rows if r["owner_epoch"] == 2]
    assert min(utc) >= paused_at


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
    full = read_ledger(tmp_path / "ledger.jsonl")
    # what is checked: the first run's 150 records per topic, then the 50 the refused runs left waiting
    assert full[:len(ledger)] == ledger and len(full) == len(ledger) + 50 * len(lake.source_topics)
    check_pipeline(spark, lake, full)  # bronze, silver and gold: the refused runs lost and doubled nothing


# 7 -------------------------------------------------------------------------------------------
def test_batch_replayed_after_its_writes_committed_counts_once(spark, lake, tmp_path):
    """The crash window of foreachBatch: the batch's appends committed to Delta, the checkpoint did
    not. Removing the last commit marker makes Spark replay that batch; the run's first write finds
    the batch's tag in each table and skips it (``batches.BatchContext``)."""
    ledger = produce_to(lake, tmp_path / "ledger.jsonl", 200, seed=61, **FAULTS)
    run(STAGES, lake, "availableNow", spark=spark)
    client = minio_client(lake)
    removed = []
    for flow in dataflow.flows(lake, "gold"):
        bucket, prefix = s3_location(flow.checkpoint + "/commits/")
        commits = sorted((o.object_name for o in client.list_objects(bucket, prefix=prefix + "/")
                          if o.object_name.rsplit("/", 1)[-1].isdigit()), key=lambda n: int(n.rsplit("/", 1)[-1]))
        assert commits, prefix
        client.remove_object(bucket, commits[-1])
        removed.append((bucket, commits[-1]))
    run(("gold",), lake, "availableNow", spark=spark)
    check_gold(spark, lake, ledger)
    check_published(spark, lake, aborted=False)  # the ledger says published: not sent again
    for bucket, name in removed:  # the replayed batches committed again
        assert client.stat_object(bucket, name)



@pytest.mark.parametrize("point", ["before-commit", pytest.param("after-commit", marks=pytest.mark.slow)])
def test_a_sigkill_around_the_publication_commit_publishes_each_order_once(spark, lake, tmp_path, point):
    """The crash points exactly-once publication adds (``gold.publish``): gold's batch appended to
    gold.orders_enriched, then the process group SIGKILLed with the batch's Kafka transaction open
    (before-commit) or committed (after-commit), the checkpoint without the batch either way
    (``tests/jobs/crash_at.py``). After a plain restart a read_committed consumer gets each order once.
    (The test after-commit's in-process twin, without a kill: the replay above.)"""
    ledger = produce_to(lake, tmp_path / "ledger.jsonl", 60, seed=71, topics=[lake.topic_orders], **FAULTS)
    run(("bronze", "silver"), lake, "availableNow", spark=spark)
    log = tmp_path / "gold.log"
    proc = subprocess.Popen([sys.executable, "-m", "tests.jobs.crash_at", point, "run", "gold", "--trigger",
                             "availableNow"], env={**settings_env(lake), "PYTHONUNBUFFERED": "1"}, cwd=ROOT,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert proc.wait(timeout=600) == -signal.SIGKILL, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            kill_hard(proc)
    assert f"crash_at: SIGKILL of the process group at {point}" in log.read_text()
    appended = delta_count(spark, lake.table_path("gold", "orders_enriched"))
    assert appended > 0  # the table first: the batch was in it when the kill came
    from tests.helpers import read_topic

    visible = len(read_topic(lake, lake.topic_enriched))
    assert visible == (appended if point == "after-commit" else 0)
    run(("gold",), lake, "availableNow", spark=spark)  # the restart, in this process
    check_gold(spark, lake, ledger)
    check_published(spark, lake, aborted=point == "before-commit")

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


def test_no_s3_or_kafka_secret_in_logs_event_logs_or_printed_config(spark, lake, tmp_path):
    from common.settings import KAFKA_ROLES, S3_ROLES

    secret = lake.s3_identity(lake.roles[0])[1]  # this session's (the tests act as admin)
    s3_secrets = {lake.s3_secret_key} | {lake.s3_identity(role)[1] for role in S3_ROLES}  # each process holds its own
    assert len(secret) >= 8
    passwords = {role: lake.kafka_identity(role)[1] for role in KAFKA_ROLES}  # bronze's is in Spark's options
    assert all(len(p) >= 8 for p in passwords.values()), "the local stack runs Kafka with SASL"
    produce_to(lake, tmp_path / "ledger.jsonl", 50, seed=801)
    events = tmp_path / "events"
    events.mkdir()
    env = {**settings_env(lake), "LAKEHOUSE_SPARK_EVENT_LOG_DIR": f"file://{events}"}
    outputs = []
    for args in (["config"], ["run", "bronze", "--trigger", "availableNow", "--verbose"], ["status"],
                 ["sql", "SELECT count(*) FROM bronze." + lake.bronze_table_for(lake.topic_orders)]):
        r = subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, (args, r.stderr[-2000:])
        outputs.append(r.stdout + r.stderr)
    event_logs = [_event_log_text(spark, p) for p in events.rglob("*") if p.is_file()]  # v2: a folder per app
    assert event_logs and any("spark.hadoop.fs.s3a.secret.key" in e for e in event_logs)  # the key is there...
    texts = outputs + event_logs
    for folder in (ROOT / ".stack" / "logs", ROOT / ".cache" / "spark-conf"):
        texts += [p.read_text(errors="replace") for p in folder.glob("*") if p.is_file()]
    for value in (*s3_secrets, *passwords.values()):
        leaks = [t[max(0, t.find(value) - 80): t.find(value)] for t in texts if value in t]
        assert not leaks, f"a secret printed after: {leaks}"  # ...its value never is
    assert "# Kafka clients: SASL_PLAINTEXT with SCRAM-SHA-512, one identity per role" in outputs[0]
    assert any("redacted" in json.dumps(e) for e in event_logs)
    # nor on any process's command line (`ps -eo args` shows them to every user of the machine), this
    # test session's JVM included: it reads the lake with the key, which reached it through py4j
    from pathlib import Path

    from pyspark import SparkContext

    ours = Path(f"/proc/{SparkContext._gateway.proc.pid}/cmdline").read_bytes()
    assert b"fs.s3a.endpoint=" in ours and b"fs.s3a.secret.key" not in ours
    assert spark.sparkContext._jsc.hadoopConfiguration().get("fs.s3a.secret.key") == secret
    for value in (*s3_secrets, *passwords.values()):  # the Kafka broker's included: its users are in files
        assert not command_lines_with(value), "a secret on a process's command line"


# 9 -------------------------------------------------------------------------------------------
def test_stray_parquet_files_are_ignored_and_a_truncated_checkpoint_file_is_named(spark, lake, tmp_path):
    """What a crash can leave: a data file written but never committed (Delta reads only files its
    log names), and a checkpoint file cut short (Spark writes them atomically on S3 and through a
    rename elsewhere, so only a broken file system or a copy by hand leaves one): the restart
    refuses with the file and the way out, and that way out rebuilds the stage exactly."""
    from minio.commonconfig import CopySource

    ledger_path = tmp_path / "ledger.jsonl"
    produce_to(lake, ledger_path, 150, seed=901, **FAULTS)
    run(STAGES, lake, "availableNow", spark=spark)
    client = minio_client(lake)

    for layer, table in (("silver", "orders"), ("gold", "orders_enriched")):
        bucket, folder = s3_location(lake.table_path(layer, table))
        data = next(o.object_name for o in client.list_objects(bucket, prefix=folder + "/", recursive=True)
                    if o.object_name.endswith(".parquet"))
        client.copy_object(bucket, f"{folder}/part-00000-stray-{table}.c000.snappy.parquet",
                           CopySource(bucket, data))
    produce_to(lake, ledger_path, 100, seed=902, **FAULTS)
    run(STAGES, lake, "availableNow", spark=spark)
    check_pipeline(spark, lake, read_ledger(ledger_path))  # the stray copies are counted nowhere

    bucket, offsets = s3_location(dataflow.flow(lake, "silver").checkpoint + "/offsets/")
    last = max((o.object_name for o in client.list_objects(bucket, prefix=offsets + "/")
                if o.object_name.rsplit("/", 1)[-1].isdigit()), key=lambda n: int(n.rsplit("/", 1)[-1]))
    whole = client.get_object(bucket, last).read()
    client.put_object(bucket, last, io.BytesIO(whole[: len(whole) * 2 // 3]), len(whole) * 2 // 3)
    produce_to(lake, ledger_path, 50, seed=903, **FAULTS)
    run(("bronze",), lake, "availableNow", spark=spark)
    with pytest.raises(CheckpointError, match=r"query silver cannot restart: .*/offsets/\d+ is truncated or corrupt "
                                              r"\(.*\); rebuild silver .*`lakehouse refresh silver`"):
        run(("silver",), lake, "availableNow", spark=spark)
    assert not spark.streams.active
    refresh(spark, plan_refresh(spark, lake, "silver"), "test")  # the way out the message names
    run(("silver", "gold"), lake, "availableNow", spark=spark)
    check_pipeline(spark, lake, read_ledger(ledger_path))
