"""A warm standby: ``lakehouse run <stage|all> --standby``.

A supervised driver that restarts after a crash starts from nothing: a JVM, a Spark session, and
code the JIT has not compiled yet, so its first micro-batches are several times slower than warm
ones (issue 38: ~60 s of an 82 s recovery). A standby pays all of that before it is needed:

1. it starts its JVM and Spark session like any run;
2. it starts and *warms up* at a lower CPU priority (``nice`` +10 from before its JVM starts, so
   that on a small machine it does not slow the active driver; given back at the takeover to the
   process, its JVM and the JVM's children, PySpark's Python workers): it runs
   silver, and gold when it stands by for gold, over made-up records on a scratch lake in a
   temporary folder (the same code paths: JSON parsing, quarantine, dedup state, the enrichment,
   the KPIs' windows, open and closed, Delta and delta-rs commits; gold_orders builds its Kafka
   payload but sends nothing), twice, the second round's event times 15 minutes after the first's
   so that it closes the first round's windows;
3. it builds its stages' queries on the real lake, changing nothing (``app.runner.prepare``: the
   DataFrames, the tables' checks, each ``foreachBatch`` function), so that the takeover only
   starts them; a stage whose tables are not ready (and the stages reading them) or whose
   checkpoint is new is built at the takeover, as is silver if the watermark its checkpoint
   restores has moved on in a way its dedup clocks would feel (``silver.job``); a query planned
   before a source table's schema changed is started again with it (``streams.schema_changed``);
4. it waits for the ownership of its stages (``common.ownership``), polling the records a few
   times a second: the moment the active driver's process is gone (same host) or its heartbeat
   has expired (another host, a paused process), it takes every stage over and the run starts
   its queries from their checkpoints, with the same guarantees as any restart.

While it waits it writes ``_lakehouse_standby.json`` beside each stage's ownership record
(``ownership.write_standby``), which ``lakehouse status`` shows.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

from common.ownership import Ownership, clear_standby, describe, write_standby
from common.settings import Settings

log = logging.getLogger("lakehouse.standby")
WARM_NICE = 10          # the warm-up's CPU priority (the active driver keeps 0)
WARM_RECORDS = 400      # generated records per topic per round
WARM_ROUNDS = 2
# event time between two rounds: more than the default watermark delays (5 minutes at most), so the
# second round closes the first's KPI windows (with longer delays it only leaves them open)
ROUND_GAP = timedelta(minutes=15)


def lower_priority() -> tuple[int, int | None]:
    """Before the standby's JVM starts (it inherits it): a lower CPU priority, so that its start
    and warm-up take only what the active driver leaves; returns what to go back to.

    With Linux's autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``) a process's
    nice value only ranks it within its session's group, and the groups share the CPU evenly: a
    standby in a session of its own (a service, ``setsid``) is lowered through its group's nice
    (``/proc/self/autogroup``), but only when nothing but itself and its ancestors is in that group
    (never the active driver started from the same terminal)."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, before + WARM_NICE)
    except OSError as e:
        log.debug("standby: priority not lowered: %s", e)
    group = _autogroup_nice()
    if group is None or not _alone_in_autogroup() or not _set_autogroup_nice(min(19, group + WARM_NICE)):
        group = None
    return before, group


def stand_by(spark, settings: Settings, stages, owner: Ownership, priority: tuple, ready=None) -> None:
    """Warm ``spark``'s JVM up, call ``ready()`` (the run builds its queries: ``app.runner.prepare``),
    then wait until ``owner`` holds every stage (returns then), and give the process and its JVM
    back their ``priority`` (``lower_priority``)."""
    t0 = time.monotonic()
    try:
        warm_up(spark, settings, stages)
    except Exception as e:  # noqa: BLE001 - a cold standby still takes over
        log.warning("standby: the warm-up failed (%s); waiting cold", str(e).splitlines()[0][:200])
    if ready is not None:
        ready()
    warm_s = time.monotonic() - t0
    print(f"  standby for {', '.join(stages)}: warm in {warm_s:.0f} s, waiting to take over", file=sys.stderr, flush=True)
    last = [0.0]

    def waiting(record: dict) -> None:
        if time.monotonic() - last[0] >= owner.expiry / 3:
            last[0] = time.monotonic()
            _write_standby(settings, stages, owner, warm_s, record)

    owner.wait(waiting=waiting)
    restore_priority(spark, priority)
    for record in owner.taken_over:
        print(f"  took over {record['stage']} from pid {record.get('pid')} on {record.get('host')} "
              f"(epoch {int(record.get('epoch', 0)) + 1}, {datetime.now(timezone.utc):%H:%M:%S} UTC)",
              file=sys.stderr, flush=True)
    _clear_standby(settings, stages)


def warm_up(spark, settings: Settings, stages=("silver",), rounds: int = WARM_ROUNDS,
            records: int = WARM_RECORDS) -> None:
    """Run silver, and gold if ``stages`` has it (without publishing), over made-up records on a
    scratch lake in a temporary folder (``warm_up_in``), deleted after."""
    folder = tempfile.mkdtemp(prefix="lakehouse-standby-")
    try:
        warm_up_in(spark, settings, folder, stages, rounds, records)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def warm_up_in(spark, settings: Settings, folder: str, stages=("silver",), rounds: int = WARM_ROUNDS,
               records: int = WARM_RECORDS) -> Settings:
    """``warm_up`` on a scratch lake in ``folder``, ``rounds`` times (the first round compiles, the
    later ones reach the JIT's higher tiers); each round's event times ``ROUND_GAP`` after the one
    before, so that a later round closes the earlier one's KPI windows (gold's final rows). Nothing
    is written to ``settings``' lake or topics. Returns the scratch lake's settings."""
    from app import dataflow
    from app.runner import run
    from bronze.job import ensure_tables, table_paths
    from bronze.transforms import KAFKA_SCHEMA, to_bronze

    import contextlib
    import io

    warmed = ("silver", "gold") if "gold" in stages else ("silver",)
    quiet = [logging.getLogger(n) for n in ("lakehouse", "py4j", "lakehouse.standby")]
    levels = [q.level for q in quiet]
    for q in quiet[:2]:  # the scratch run's start lines and batches are not the pipeline's
        q.setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
    try:
        scratch = settings.with_overrides(lake_root=f"{folder}/lake", checkpoint_root="", lake_layout="single")
        ensure_tables(spark, scratch, dataflow.flows(scratch, "bronze")[0])
        paths = table_paths(scratch)
        if "gold" in warmed:
            from silver import customers

            customers.load(spark, scratch)
        for n in range(rounds):
            t0 = time.monotonic()
            now = datetime.now(timezone.utc).replace(tzinfo=None)
            start = datetime.now(timezone.utc) - (rounds - 1 - n) * ROUND_GAP
            rows = [(key, value.encode(), src.topic, 0, n * records + i, now, 0, [])
                    for src in scratch.sources for i, (key, value) in enumerate(_records(src.kind, records, n, start))]
            batch = to_bronze(spark.createDataFrame(rows, KAFKA_SCHEMA))
            for topic, path in paths.items():
                batch.filter(batch.topic == topic).write.format("delta").mode("append").save(path)
            with contextlib.redirect_stderr(io.StringIO()):
                run(warmed, scratch, "availableNow", spark=spark, publish=False)
            log.info("standby: warm-up round %d in %.1f s", n + 1, time.monotonic() - t0)
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    return scratch


def _records(kind: str, count: int, seed: int, start: datetime):
    """(key, JSON value) of ``count`` made-up records of source ``kind`` from event time ``start``,
    every 25th malformed and every 20th a copy of the one before (silver's quarantine and dedup
    paths)."""
    import json
    import random

    rng = random.Random(seed)
    previous = None
    for i in range(count):
        at = (start.timestamp() + i * 0.01)
        ts = datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        if kind == "orders":
            items = [{"product_id": p, "product_name": f"product-{p}", "quantity": q, "unit_price": 9.99,
                      "subtotal": round(q * 9.99, 2)} for p, q in ((rng.randint(1, 8), rng.randint(1, 5)) for _ in range(3))]
            key, payload = f"CUST-{rng.randint(1, 20):03d}", {
                "order_id": seed * 1_000_000 + i, "customer_id": None, "timestamp": ts, "items": items,
                "total": round(sum(x["subtotal"] for x in items), 2), "status": "paid"}
            payload["customer_id"] = key
        elif kind == "logs":
            key, payload = None, {"timestamp": ts, "level": rng.choice(("INFO", "WARNING", "ERROR")), "module": "auth",
                                  "message": "warm-up", "request_id": f"req-{i}", "user_id": "user-0001",
                                  "duration_ms": rng.randint(1, 2000)}
        else:
            key, payload = f"host-{i % 4}", {"timestamp": ts, "host": f"host-{i % 4}", "metrics": {
                "cpu_percent": rng.uniform(1, 99), "memory_percent": rng.uniform(10, 95),
                "disk_percent": rng.uniform(5, 90), "response_time_ms": rng.uniform(5, 800)}}
        value = json.dumps(payload)
        if i % 25 == 24:
            value = value[: len(value) // 2]
        elif i % 20 == 19 and previous:
            key, value = previous
        previous = (key, value)
        yield (key.encode() if key else None), value


# ---- what status shows --------------------------------------------------------------------------
def _write_standby(settings: Settings, stages, owner: Ownership, warm_s: float, active: dict) -> None:
    record = {"app": owner.app, "app_id": owner.app_id, "host": socket.gethostname(), "pid": os.getpid(),
              "stages": list(stages), "heartbeat": time.time(), "warm_s": round(warm_s, 1), "expiry": owner.expiry,
              "waiting_for": describe(active)}
    for stage in stages:
        try:
            write_standby(settings, stage, record)
        except Exception as e:  # noqa: BLE001 - status only
            log.debug("standby record of %s not written: %s", stage, e)


def _clear_standby(settings: Settings, stages) -> None:
    for stage in stages:
        try:
            clear_standby(settings, stage)
        except Exception as e:  # noqa: BLE001 - status only: an old record expires
            log.debug("standby record of %s not deleted: %s", stage, e)


# ---- CPU priority -------------------------------------------------------------------------------
def restore_priority(spark, priority: tuple) -> None:
    """The takeover: ``priority`` (``lower_priority``'s) back to this process, its JVM and the JVM's
    children - PySpark's worker daemon, forked during the warm-up, and its workers (the silver
    batch's Python-made rows: ``createDataFrame``), which would otherwise do the active driver's
    Python work at the standby's priority, beside the killed driver's warm-up as the new standby
    (measured in a takeover: two workers at +10, 113 % of a core between them)."""
    before, group = priority
    jvm = _jvm_pid(spark)
    restored = _renice([os.getpid(), jvm, *_descendants(jvm)], before)
    if group is not None:
        restored = _set_autogroup_nice(group) and restored
    if not restored:
        log.warning("standby: running on at CPU priority +%d (raising it back needs CAP_SYS_NICE or RLIMIT_NICE)",
                    WARM_NICE)


def _jvm_pid(spark) -> int | None:
    try:
        return int(spark.sparkContext._jvm.ProcessHandle.current().pid())
    except Exception:  # noqa: BLE001
        return None


def _autogroup_nice() -> int | None:
    """This process's autogroup nice value (None: no autogroup scheduling here)."""
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            if f.read().strip() != "1":
                return None
        with open("/proc/self/autogroup") as f:  # "/autogroup-<id> nice <n>"
            return int(f.read().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def _set_autogroup_nice(value: int) -> bool:
    """This process's autogroup to nice ``value``; False when it could not be (raising a priority
    needs CAP_SYS_NICE)."""
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(value))
        return True
    except OSError as e:
        log.debug("standby: autogroup priority not set to %d: %s", value, e)
        return False


def _alone_in_autogroup() -> bool:
    """No process but this one and its ancestors is in its autogroup."""
    def group(pid) -> str | None:
        try:
            with open(f"/proc/{pid}/autogroup") as f:
                return f.read().split()[0]
        except (OSError, IndexError):
            return None

    mine, ours, pid = group("self"), {os.getpid()}, os.getppid()
    while pid is not None and pid > 1 and pid not in ours:
        ours.add(pid)
        pid = _parent(pid)
    return mine is not None and not any(group(p) == mine for p in os.listdir("/proc")
                                        if p.isdigit() and int(p) not in ours)


def _parent(pid: int) -> int | None:
    """The parent of process ``pid`` (None: gone or unreadable), from ``/proc/<pid>/stat``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _descendants(pid: int | None) -> list[int]:
    """Every process below ``pid`` (children, theirs, ...), from ``/proc``."""
    if pid is None:
        return []
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            children.setdefault(_parent(int(entry)), []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def _renice(pids, value: int) -> bool:
    """Every thread of ``pids`` to niceness ``value`` (Linux: each thread has its own); False when
    some could not be (raising a priority needs CAP_SYS_NICE, or RLIMIT_NICE)."""
    done = True
    for pid in pids:
        if pid is None:
            continue
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            tids = [pid]
        for tid in tids:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, value)
            except ProcessLookupError:  # a thread that just ended
                pass
            except OSError as e:
                log.debug("niceness of thread %d not set to %d: %s", tid, value, e)
                done = False
    return done
