"""The benchmark: throughput, recovery, backfill, files and memory, the project beside its peer.

    make bench          # = python -m bench.p2 (latency beside the peer), then python -m bench.run

Live phase (each system as its own process, the way it runs in production, one Spark app):
  P1 throughput - the project (``lakehouse run all``, its defaults) and then the peer
     (``bench.peer``), each on fresh topics and a fresh lake prefix, fed at a ladder of rates
     (``--ladder``, default 100 orders/s and steps x1.5, plus as many logs and metrics records/s),
     each held ``--step-seconds`` (180). A rate is *sustained* when the producer kept pace (several
     producer processes above what one sends), gold got every order of the step, and the lag did
     not grow: the p99 Kafka -> gold of the orders sent in the step's last minute is at most 1.5x
     that of its first minute. The ladder stops at the first rate that is not.
     Beside them: the generator's own maximum (one process, and ``--producers`` processes), and
     Spark's batch rate for from_json + explode of the same orders (a ceiling).
  P2 latency - per order and step, Kafka record timestamp -> the Delta commit that made it visible
     in bronze, silver and gold (``bench.measure.first_visible``); event -> gold beside the peer at
     fixed rates is ``bench.p2``.
  P4 recovery - the project at ``--recovery-rate`` (100 orders/s): SIGKILL of ``run all`` 30 s into
     a step and an immediate restart; seconds until every order sent before the kill is in gold,
     ``--kills`` times (3), median reported; the same with a warm standby beside ``run all``
     (``--standby``: the kill hits the active one, the standby takes over, the killed one comes back
     as the standby; also the seconds until the standby owns every stage, and until every query
     has committed its first micro-batch after the kill, issue 38's takeover, from the event log);
     then the peer (each on its own lake and topics; ``--p4-systems``).
  P5 small files - files per gold table after the live run, files the writers added in total, and
     after ``lakehouse maintain`` (OPTIMIZE).
  P6 memory - peak RSS (VmHWM) of Kafka, MinIO and the Spark app (Python driver + JVM).
Backfill phase:
  P3 - ``--orders`` (300,000) orders (+ as many logs and metrics) from Kafka to gold with
     availableNow, against a raw Spark Kafka -> noop read of the same topics.

Writes ``bench/results/<date>.json`` and adds a Markdown table to ``bench/README.md`` (at the end of
its "Runs" section).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from bench.measure import cpu_seconds, epoch_s, first_visible, peak_rss_mib, percentiles, rss_mib, table_files
from devstack.generator import GenOptions, produce
from app.runner import run, setup_logging
from common.settings import OPS, Settings, env_var
from common.streams import kafka_options
from devstack.stack import Stack, wait_until

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ID_BLOCK = 10_000_000  # order ids of step i start at (i + 1) * ID_BLOCK
WORKER_BLOCK = 1_000_000  # order ids of producer process j of a step start at step start + j * WORKER_BLOCK
ONE_PRODUCER = 4000.0  # records/s one producer process is given at most (it sends ~5,500/s flat out)
# Issue 11's targets (2 cores); P2 beside the peer is measured by bench.p2.
TARGETS = {"P1_orders_per_s": 3000, "P2_e2e_p99_s": 10, "P3_ratio": 6.0, "P4_s": 20, "P5_files": 64, "P6_gib": 6}
SYSTEMS = {"project": ["-m", "app.cli", "run", "all"], "peer": ["-m", "bench.peer"]}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def bench_start() -> tuple[Settings, datetime, Path]:
    """Logging, settings, the stack up, and this run's date and log folder."""
    setup_logging()
    base = Settings.from_env()
    Stack(base).up()
    date = datetime.now(timezone.utc)
    logdir = ROOT / ".cache" / "bench" / date.strftime("%Y%m%dT%H%M%S")
    logdir.mkdir(parents=True, exist_ok=True)
    return base, date, logdir


def results_file(date: datetime, suffix: str = "") -> Path:
    """``bench/results/<date><suffix>.json``; a second run the same day keeps the first's results
    and writes ``<date>T<HHMM><suffix>.json``."""
    out = HERE / "results" / f"{date:%Y-%m-%d}{suffix}.json"
    out.parent.mkdir(exist_ok=True)
    return out.with_name(f"{date:%Y-%m-%dT%H%M}{suffix}.json") if out.exists() else out


def fresh(base: Settings, tag: str) -> Settings:
    s = base.with_topic_scope(tag, lake_root=f"{base.lake_root.rstrip('/')}/bench/{tag}")
    Stack(s).ensure_topics()
    return s


def app_env(s: Settings) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for name in ("lake_root", "topic_orders", "topic_logs", "topic_metrics", "topic_enriched", "shuffle_partitions",
                 "max_offsets_per_trigger", "compact_every"):
        env[env_var(name)] = str(getattr(s, name))
    return env


def gold_path(s: Settings, system: str) -> str:
    return f"{s.zone_root(OPS)}/_peer/gold" if system == "peer" else s.table_path("gold", "orders_enriched")


def gold_count(spark, s: Settings, system: str, first: int, last: int) -> int:
    """Distinct orders with ids in [first, last] in the system's gold table."""
    try:
        return (spark.read.format("delta").load(gold_path(s, system)).where(f"order_id BETWEEN {first} AND {last}")
                .select("order_id").distinct().count())
    except Exception:  # not created yet
        return 0


def _kafka_ms(column: str = "kafka_timestamp"):
    """A Kafka record timestamp column as epoch milliseconds, named ``kafka_ms``."""
    from pyspark.sql import functions as F

    return (F.col(column).cast("double") * 1000).alias("kafka_ms")


def _order_commits(spark, s: Settings):
    """(silver orders with Kafka time in ms and commit time, gold orders_enriched commit times)."""
    silver = first_visible(spark, s.table_path("silver", "orders"), ["order_id", "kafka_timestamp"]).select(
        "order_id", _kafka_ms(), "commit_ms")
    gold = first_visible(spark, s.table_path("gold", "orders_enriched"), ["order_id"]).join(
        silver.select("order_id", "kafka_ms"), "order_id")
    return silver, gold


def gold_pairs(spark, s: Settings, system: str, first: int = 0) -> list[tuple[float, float]]:
    """(Kafka timestamp ms, gold commit ms) of every order with id >= ``first`` that reached gold."""
    if system == "peer":
        df = first_visible(spark, gold_path(s, system), ["order_id", "kafka_timestamp"]).select(
            "order_id", _kafka_ms(), "commit_ms")
    else:
        df = _order_commits(spark, s)[1]
    return [(r.kafka_ms, r.commit_ms) for r in df.where(f"order_id >= {first}").collect()]


def kpi_pairs(spark, s: Settings, first: int = 0, final: bool = False) -> list[tuple[float, float]]:
    """(Kafka timestamp ms, commit ms) per order with id >= ``first``, for the KPI
    ``customer_minute_totals``: the first commit in which the order's window and customer count it
    (in ``<kpi>_open`` or, once closed, ``<kpi>``: what ``gold.<kpi>_live`` shows), or with
    ``final`` the commit of the window's final row. Every commit of a row holds its running
    ``nb_commandes``, and gold_kpis reads silver's commits in order, so the k-th order of a window
    and customer (by silver commit) is counted by the first commit whose ``nb_commandes`` reaches k."""
    from pyspark.sql import functions as F

    window = F.window("event_time", s.minute_window).start.cast("string").alias("w")
    silver = first_visible(spark, s.table_path("silver", "orders"), ["order_id", "customer_id", "event_time",
                                                                      "kafka_timestamp"])
    orders = silver.select("order_id", "customer_id", window, _kafka_ms(), "commit_ms").collect()
    counted: dict[tuple, list[tuple[float, int]]] = {}
    for table in ("customer_minute_totals",) + (() if final else ("customer_minute_totals_open",)):
        rows = first_visible(spark, s.table_path("gold", table), ["window_start", "customer_id", "nb_commandes"])
        for r in rows.select(F.col("window_start").cast("string").alias("w"), "customer_id", "nb_commandes",
                             "commit_ms").collect():
            counted.setdefault((r.w, r.customer_id), []).append((r.commit_ms, r.nb_commandes))
    out, rank = [], {}
    for r in sorted(orders, key=lambda r: (r.commit_ms, r.order_id)):
        key = (r.w, r.customer_id)
        rank[key] = rank.get(key, 0) + 1
        commit = min((c for c, total in counted.get(key, []) if total >= rank[key]), default=None)
        if commit is not None and r.order_id >= first:
            out.append((r.kafka_ms, commit))
    return out


class App:
    """A system (``run all`` or the peer) in its own process group."""

    def __init__(self, s: Settings, system: str, logdir: Path, phase: str):
        self.s, self.system, self.logdir, self.phase, self.n = s, system, logdir, phase, 0
        self.proc: subprocess.Popen | None = None
        self.peak_mib = 0.0
        self.logs: dict[int, str] = {}  # pid -> its log file

    @property
    def label(self) -> str:
        """What the bench's log calls it."""
        return self.system

    def start(self) -> None:
        self.proc = self._spawn(self.system)

    def _spawn(self, name: str, *extra: str) -> subprocess.Popen:
        """The system's process (its log ``<phase>-<name>-<n>.log``), in a process group of its own."""
        self.n += 1
        out = open(self.logdir / f"{self.phase}-{name}-{self.n}.log", "w")
        proc = subprocess.Popen([sys.executable, *SYSTEMS[self.system], *extra], env=app_env(self.s), cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.logs[proc.pid] = out.name
        return proc

    def sample_memory(self) -> None:
        rss = peak_rss_mib(self.proc.pid if self.proc else None)
        self.peak_mib = max(self.peak_mib, rss or 0.0)

    def kill(self, sig=signal.SIGKILL) -> None:
        self.sample_memory()
        self.killed_at = time.time()
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        return True


class StandbyApp(App):
    """``run all`` with a warm standby beside it (``--standby``, issue 38): a kill hits whichever
    process is active and the standby takes over; ``start`` after a kill starts the killed one again,
    as the new standby. ``takeover_s``: from each SIGKILL to the standby owning every stage."""

    def __init__(self, s: Settings, logdir: Path, phase: str):
        super().__init__(s, "project", logdir, phase)
        self.procs: list[subprocess.Popen] = []
        self.takeover_s: list[float] = []
        self.waiting_cost: list[dict] = []  # per kill: the waiting standby's CPU (% of a core) and RSS

    @property
    def label(self) -> str:
        return "project with a standby"

    def start(self) -> None:
        if not self.procs:
            self.procs.append(self._spawn("standby"))
        self.procs.append(self._spawn("standby", "--standby"))
        self.proc = self._active() or self.procs[0]

    def _owner_pids(self) -> set:
        from common.ownership import read_owner

        return {(read_owner(self.s, st) or {}).get("pid") for st in ("bronze", "silver", "gold")}

    def _active(self) -> subprocess.Popen | None:
        pids = self._owner_pids()
        return next((p for p in self.procs if {p.pid} == pids and p.poll() is None), None)

    def _warm(self, proc: subprocess.Popen) -> bool:
        return "waiting to take over" in Path(self.logs[proc.pid]).read_text(errors="replace")

    def kill(self, sig=signal.SIGKILL) -> None:
        active = self._active()
        standbys = [p for p in self.procs if p is not active and p.poll() is None]
        if sig == signal.SIGKILL and any(self._warm(p) for p in standbys):
            # what a warm standby costs while it waits: its CPU over 10 s, its resident memory
            waiting = next(p for p in standbys if self._warm(p))
            cpu0 = cpu_seconds(waiting.pid)
            time.sleep(10)
            self.waiting_cost.append({"cpu_pct": round((cpu_seconds(waiting.pid) - cpu0) * 10, 1),
                                      "rss_mib": rss_mib(waiting.pid)})
        self.proc = active or self.procs[0]
        self.sample_memory()
        t0, self.killed_at = time.monotonic(), time.time()
        for p in ([active] if active and sig == signal.SIGKILL else [p for p in reversed(self.procs) if p.poll() is None]):
            os.killpg(p.pid, sig)
            p.wait(timeout=120)
            self.procs.remove(p)
        if sig == signal.SIGKILL and standbys:
            wait_until(lambda: self._active() is not None, 120, "the standby to take over", interval=0.1)
            self.takeover_s.append(round(time.monotonic() - t0, 2))
            log(f"  standby took over {self.takeover_s[-1]} s after the SIGKILL")

    def alive(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def ready(self) -> bool:
        """A warm standby waits beside the active process."""
        active = self._active()
        return any(self._warm(p) for p in self.procs if p is not active and p.poll() is None)


def started(spark, base: Settings, system: str, logdir: Path, phase: str) -> App:
    """``system`` started on a fresh lake prefix and fresh topics, the customers loaded."""
    from silver import customers

    s = fresh(base, f"{phase}-{system}-{uuid.uuid4().hex[:6]}")
    customers.load(spark, s)
    app = StandbyApp(s, logdir, phase) if system == "standby" else App(s, system, logdir, phase)
    app.start()
    return app


def producer_options(s: Settings, opts: GenOptions) -> list[GenOptions]:
    """``opts`` split over as many producer processes as its rate needs (each sends at most
    ``ONE_PRODUCER`` records/s), each with its own seed and block of order ids."""
    n = max(1, -(-int(opts.rate * len(opts.topics)) // int(ONE_PRODUCER))) if opts.rate else 1
    return [dataclasses.replace(opts, count=opts.count // n + (1 if j < opts.count % n else 0), rate=opts.rate / n,
                                seed=opts.seed * 100 + j, first_order_id=opts.first_order_id + j * WORKER_BLOCK,
                                progress=False)
            for j in range(n)]


def produce_parallel(s: Settings, parts: list[GenOptions]) -> None:
    """Send ``parts`` at once, one process each (spawned: a forked child would share this process's
    connection to its Spark JVM)."""
    if len(parts) == 1:
        produce(s, parts[0])
        return
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=produce, args=(s, o), daemon=True) for o in parts]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise RuntimeError(f"{len(failed)} producer process(es) failed (exit codes {failed})")


def generator_max(base: Settings, producers: int) -> dict:
    """Records/s the generator sends flat out (no pacing) in one process and in ``producers``."""
    out = {}
    for n in sorted({1, producers}):
        s = fresh(base, f"gen-{uuid.uuid4().hex[:6]}")
        per = 20_000
        parts = [GenOptions(topics=s.source_topics, count=per, seed=j, first_order_id=1 + j * WORKER_BLOCK,
                            progress=False) for j in range(n)]
        t = time.monotonic()
        produce_parallel(s, parts)
        out[f"{n}_process"] = round(3 * per * n / (time.monotonic() - t))
        log(f"generator flat out, {n} process(es): {out[f'{n}_process']} records/s")
    return out


def run_step(spark, app: App, i: int, rate: float, seconds: float, kill_at: float | None = None,
             max_drain: float = 300.0) -> dict:
    """``seconds`` of load at ``rate`` orders/s (+ as many logs and metrics), then wait until gold has
    every order of the step (at most ``max_drain`` s). With ``kill_at``: SIGKILL and restart of the
    app that many seconds into the step."""
    s = app.s
    opts = GenOptions(topics=s.source_topics, count=int(rate * seconds), rate=rate, seed=1000 + i,
                      first_order_id=(i + 1) * ID_BLOCK, progress=False)
    parts = producer_options(s, opts)
    first, last = opts.first_order_id, (i + 2) * ID_BLOCK - 1
    step = {"rate": rate, "seconds": seconds, "first_id": first, "orders": opts.count, "producers": len(parts)}
    err: list[BaseException] = []

    def producer():
        try:
            produce_parallel(s, parts)
        except BaseException as e:  # noqa: BLE001
            err.append(e)

    t0 = time.time()
    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    if kill_at is not None:
        time.sleep(kill_at)  # the moment of the fault
        app.kill()
        step["killed_at"] = app.killed_at
        app.start()
        log(f"  SIGKILL at {step['killed_at'] - t0:.0f} s into the step; app restarted")
    while thread.is_alive():
        thread.join(5)
        app.sample_memory()
    if err:
        raise err[0]
    t_end = time.time()
    step.update(t0=t0, t_end=t_end, producer_orders_per_s=round(opts.count / (t_end - t0), 1))
    try:
        wait_until(lambda: gold_count(spark, s, app.system, first, last) >= opts.count or not app.alive(),
                   max_drain, "gold to catch up", interval=2.0)
    except Exception:  # reported as caught_up = False
        pass
    step["drain_s"] = round(time.time() - t_end, 1)
    step["caught_up"] = app.alive() and gold_count(spark, s, app.system, first, last) >= opts.count
    return step


def judge(step: dict, pairs: list[tuple[float, float]]) -> None:
    """Latency of the step's orders, its first and last minute, and whether the rate was sustained."""
    t0, t_end = step["t0"] * 1000, step["t_end"] * 1000
    lat = [(k, (c - k) / 1000) for k, c in pairs if t0 <= k <= t_end]
    step["gold"] = percentiles([x for _, x in lat])
    first = percentiles([x for k, x in lat if k < t0 + 60_000])
    last = percentiles([x for k, x in lat if k >= t_end - 60_000])
    step["gold_p99_first_minute_s"], step["gold_p99_last_minute_s"] = first["p99"], last["p99"]
    step["sustained"] = bool(step["caught_up"] and step["producer_orders_per_s"] >= 0.95 * step["rate"]
                             and first["p99"] and last["p99"] and last["p99"] <= 1.5 * first["p99"])


def hop_latencies(spark, s: Settings, steps: list[dict]) -> None:
    """The project's per-hop p50/p99 (event -> bronze, silver, gold) per step."""
    bronze = first_visible(spark, s.table_path("bronze", s.bronze_table_for(s.topic_orders)), ["timestamp"])
    b_rows = bronze.select(_kafka_ms("timestamp"), "commit_ms").collect()
    silver, _ = _order_commits(spark, s)
    s_rows = silver.collect()
    for st in steps:
        lo_ms, hi_ms = st["t0"] * 1000, st["t_end"] * 1000
        st["hops_s"] = {name: percentiles([(r.commit_ms - r.kafka_ms) / 1000 for r in rows
                                           if lo_ms <= r.kafka_ms <= hi_ms])
                        for name, rows in (("bronze", b_rows), ("silver", s_rows))}


def ceiling_from_json_explode(spark, s: Settings) -> dict:
    """Spark's batch rate for from_json + explode of the same order records (the P1 ceiling)."""
    from pyspark.sql import functions as F

    from silver.transforms import KINDS

    raw = (spark.read.format("kafka").options(**kafka_options(s))
           .option("subscribe", s.topic_orders).option("startingOffsets", "earliest").load())
    raw.select("value").write.format("noop").mode("overwrite").save()  # warm the connection
    t = time.monotonic()
    parsed = raw.select(F.from_json(F.col("value").cast("string"), KINDS["orders"].raw).alias("o"))
    parsed.select("o.order_id", F.explode("o.items").alias("item")).write.format("noop").mode("overwrite").save()
    seconds = time.monotonic() - t
    n = raw.count()
    return {"orders": n, "seconds": round(seconds, 1), "orders_per_s": round(n / seconds)}


def ladder(spark, base: Settings, system: str, args, logdir: Path) -> dict:
    """P1 for one system: warm-up, then the ladder until a rate is not sustained."""
    app = started(spark, base, system, logdir, "p1")
    s = app.s
    out: dict = {"system": system, "lake_root": s.lake_root, "topic_orders": s.topic_orders}
    steps: list[dict] = []
    try:
        warm = run_step(spark, app, 0, args.ladder[0], 30)
        log(f"P1 {system}: warm-up drained in {warm['drain_s']} s")
        cpu0, wall0 = cpu_seconds(app.proc.pid), time.time()
        for i, rate in enumerate(args.ladder, start=1):
            st = run_step(spark, app, i, rate, args.step_seconds)
            judge(st, gold_pairs(spark, s, system, st["first_id"]))
            steps.append(st)
            log(f"  {system} {rate:g} orders/s for {args.step_seconds:g} s ({st['producers']} producer(s) at "
                f"{st['producer_orders_per_s']}/s): gold p99 first minute {st['gold_p99_first_minute_s']} s, last "
                f"minute {st['gold_p99_last_minute_s']} s, drained {st['drain_s']} s after: "
                f"{'sustained' if st['sustained'] else 'NOT sustained'}")
            if not st["sustained"]:
                break
        # a process tree that died has no CPU figure (its /proc entries are gone)
        out["cpu_s_per_wall_s"] = (round((cpu_seconds(app.proc.pid) - cpu0) / (time.time() - wall0), 2)
                                   if app.alive() else None)
        app.sample_memory()
        out["peak_rss_mib"] = app.peak_mib
    finally:
        if app.alive():
            app.kill(signal.SIGTERM)
    if system == "project":
        hop_latencies(spark, s, steps)
    sustained = [st["rate"] for st in steps if st["sustained"]]
    out.update(steps=steps, sustained_orders_per_s=max(sustained) if sustained else 0.0)
    return out


def _kills(spark, app: App, args) -> list[dict]:
    """``args.kills`` SIGKILLs of ``app`` under load, each restarted at once; the seconds from each
    kill until every order sent before it is in gold."""
    warm = run_step(spark, app, 0, args.recovery_rate, 30)
    log(f"P4 {app.label}: warm-up drained in {warm['drain_s']} s; {args.kills} kills at {args.recovery_rate:g} "
        "orders/s")
    kills = []
    for k in range(args.kills):
        t0 = time.monotonic()  # a pair's fault hits it with its standby warm (it warms at low priority)
        wait_until(app.ready, 900, "the standby to be warm", interval=2.0)
        if time.monotonic() - t0 > 1:
            log(f"  {app.label}: waited {time.monotonic() - t0:.0f} s for a warm standby")
        st = run_step(spark, app, k + 1, args.recovery_rate, args.kill_after + 60, kill_at=args.kill_after)
        before = [c for kms, c in gold_pairs(spark, app.s, app.system, st["first_id"])
                  if kms <= st["killed_at"] * 1000]
        st["recovery_s"] = round(max(before) / 1000 - st["killed_at"], 1) if before and st["caught_up"] else None
        kills.append(st)
        log(f"  {app.label} kill {k + 1}: every order sent before it in gold {st['recovery_s']} s after the SIGKILL")
    return kills


def first_batches_s(s: Settings, killed_at: float) -> dict:
    """After a SIGKILL at ``killed_at`` (epoch s): per query, seconds until its first micro-batch
    committed after the kill (the event log's ``ended_at``, read from its Delta folders), and
    ``all``: until every query that ran before the kill had (issue 38's takeover: every query
    running with its first batch committed); None where a query has none. ``detail``: that batch
    of each query (``first_batches``). The log's last rows are flushed when the app stops."""
    from common.eventlog import VIEW
    from serving.native import NativeLake

    rows = NativeLake(s).rows(f"{OPS}.{VIEW}",
                              columns="query, batch_id, started_at, ended_at, input_rows, durations")
    firsts = first_batches(rows, killed_at)
    out: dict = {q: (b["ended_s"] if b else None) for q, b in firsts.items()}
    out["all"] = None if not out or None in out.values() else max(out.values())
    out["detail"] = firsts
    return out


def first_batches(rows: list[dict], killed_at: float) -> dict[str, dict | None]:
    """Per query of the event log's ``rows``: its first micro-batch that began after ``killed_at``
    (epoch s; after a takeover, the batch the dead driver had planned, replayed), as when it began
    and ended (seconds after the kill), its id, its input rows and Spark's ``durationMs`` of it
    (where its time went: ``addBatch``, ``queryPlanning``, ``getBatch``, ...); None for a query
    with no batch since."""
    out: dict[str, dict | None] = {r["query"]: None for r in rows}
    since = [r for r in rows if r["started_at"] is not None and r["ended_at"] is not None
             and epoch_s(r["started_at"]) >= killed_at]
    for r in sorted(since, key=lambda r: epoch_s(r["started_at"])):
        if out[r["query"]] is None:
            out[r["query"]] = {"batch": r["batch_id"], "rows": r["input_rows"],
                               "began_s": round(epoch_s(r["started_at"]) - killed_at, 1),
                               "ended_s": round(epoch_s(r["ended_at"]) - killed_at, 1),
                               "durations_ms": {k: v for k, v in json.loads(r["durations"] or "{}").items() if v}}
    return out


def describe_first(query: str, batch: dict | None) -> str:
    """One query's ``first_batches`` entry in a line: its span after the kill and its three
    largest ``durationMs`` parts."""
    if batch is None:
        return f"{query} none"
    parts = sorted(((v, k) for k, v in batch["durations_ms"].items() if k != "triggerExecution"), reverse=True)[:3]
    return (f"{query} batch {batch['batch']} ({batch['rows']} rows) {batch['began_s']} -> {batch['ended_s']}"
            + (f" ({', '.join(f'{k} {v / 1000:.1f}' for v, k in parts)})" if parts else ""))


def _median(kills: list[dict]) -> float | None:
    done = [k["recovery_s"] for k in kills if k["recovery_s"] is not None]
    return statistics.median(done) if done and len(done) == len(kills) else None


def recovery(spark, base: Settings, args, logdir: Path) -> dict:
    """P4: SIGKILL of ``run all`` under load, ``args.kills`` times; files (P5) and memory (P6) after;
    then the same kills of ``run all`` with a warm standby beside it (``--standby``), and of the peer,
    each on its own fresh lake prefix and topics (``args.p4_systems``)."""
    from common.tables import maintain
    from gold.transforms import KPIS

    def killed(system: str, phase: str) -> tuple[App, dict]:
        app = started(spark, base, system, logdir, phase)
        try:
            kills = _kills(spark, app, args)
        finally:
            if app.alive():
                app.kill(signal.SIGTERM)
        return app, {"kills": kills, "recovery_s": [k["recovery_s"] for k in kills], "median_s": _median(kills)}

    out = {"rate": args.recovery_rate}
    if "standby" in args.p4_systems:
        pair, out["standby"] = killed("standby", "p4s")
        firsts = [first_batches_s(pair.s, k["killed_at"]) for k in out["standby"]["kills"]]
        every = [f["all"] for f in firsts]
        out["standby"].update(takeover_s=pair.takeover_s, standby_waiting=pair.waiting_cost,
                              takeover_median_s=statistics.median(pair.takeover_s) if pair.takeover_s else None,
                              first_batches_s=firsts,
                              first_batches_median_s=statistics.median(every) if None not in every else None)
        log(f"  standby: every query's first batch committed {every} s after each SIGKILL")
        for k, f in enumerate(firsts):
            log(f"  kill {k + 1}, each query's first batch (s after the kill): "
                + "; ".join(describe_first(q, b) for q, b in f["detail"].items()))
    if "project" not in args.p4_systems:
        return out
    app = started(spark, base, "project", logdir, "p4")
    s = app.s
    stack = Stack(s)
    try:
        kills = _kills(spark, app, args)
        memory = {"kafka": peak_rss_mib(stack.pid("kafka")), "minio": peak_rss_mib(stack.pid("minio"))}
        app.sample_memory()
        memory["spark_app"] = app.peak_mib
    finally:
        if app.alive():
            app.kill(signal.SIGTERM)
    files = {}
    for name in [k.name for k in KPIS] + ["orders_enriched"]:
        path = s.table_path("gold", name)
        files[name] = table_files(spark, path)
        files[name]["files_after_optimize"] = maintain(spark, path)["files_after"]
    out.update({"kills": kills, "recovery_s": [k["recovery_s"] for k in kills], "median_s": _median(kills),
                "memory_peak_mib": memory, "gold_files": files})
    if "peer" in args.p4_systems:
        out["peer"] = killed("peer", "p4")[1]
    return out


def backfill_phase(spark, base: Settings, orders: int, producers: int) -> dict:
    from silver import customers

    s = fresh(base, f"backfill-{uuid.uuid4().hex[:6]}")
    log(f"backfill phase: producing {orders} orders + logs + metrics ({producers} processes)")
    t = time.monotonic()
    produce_parallel(s, producer_options(s, GenOptions(topics=s.source_topics, count=orders, seed=1,
                                                      rate=producers * ONE_PRODUCER / 3, first_order_id=1)))
    produce_s = time.monotonic() - t
    customers.load(spark, s)
    raw = (spark.readStream.format("kafka").options(**kafka_options(s))
           .option("subscribe", ",".join(s.source_topics)).option("startingOffsets", "earliest").load())
    t = time.monotonic()
    q = (raw.writeStream.format("noop").trigger(availableNow=True)
         .option("checkpointLocation", f"{s.checkpoints}/_bench_noop").start())
    q.awaitTermination()
    raw_s = time.monotonic() - t
    log(f"  raw Kafka -> noop: {raw_s:.1f} s")
    stages = {}
    for stage in ("bronze", "silver", "gold"):
        t = time.monotonic()
        run((stage,), s, "availableNow", spark=spark)
        stages[stage] = round(time.monotonic() - t, 1)
        log(f"  {stage}: {stages[stage]} s")
    total = sum(stages.values())
    return {"orders": orders, "records": 3 * orders, "produce_records_per_s": round(3 * orders / produce_s),
            "raw_kafka_noop_s": round(raw_s, 1), "stages_s": stages, "kafka_to_gold_s": round(total, 1),
            "ratio_to_raw": round(total / raw_s, 1), "orders_per_s": round(orders / total),
            "bronze_records_per_s": round(3 * orders / stages["bronze"])}


def summary(result: dict) -> dict:
    out = {}
    for system, p1 in result.get("p1", {}).items():
        out[f"P1_{system}_orders_per_s"] = p1["sustained_orders_per_s"]
        at = [st for st in p1["steps"] if st["sustained"]]
        if at:
            out[f"P2_{system}_gold_at_P1_rate_s"] = max(at, key=lambda x: x["rate"])["gold"]
    if "ceiling" in result:
        out["P1_ceiling_orders_per_s"] = result["ceiling"]["orders_per_s"]
    if "generator" in result:
        out["generator_records_per_s"] = result["generator"]
    if "recovery" in result:
        rec = result["recovery"]
        out["P4_recovery_s"] = rec.get("recovery_s")
        out["P4_median_s"] = rec.get("median_s")
        if "peer" in rec:
            out["P4_peer_recovery_s"] = rec["peer"]["recovery_s"]
            out["P4_peer_median_s"] = rec["peer"]["median_s"]
        if "standby" in rec:
            out["P4_standby_recovery_s"] = rec["standby"]["recovery_s"]
            out["P4_standby_median_s"] = rec["standby"]["median_s"]
            out["P4_takeover_s"] = rec["standby"]["takeover_s"]
            out["P4_takeover_median_s"] = rec["standby"]["takeover_median_s"]
            out["P4_standby_waiting"] = rec["standby"]["standby_waiting"]
            out["P4_takeover_first_batches_s"] = [f["all"] for f in rec["standby"].get("first_batches_s", [])]
            out["P4_takeover_first_batches_median_s"] = rec["standby"].get("first_batches_median_s")
        if "gold_files" in rec:
            out["P5_max_files_per_gold_table"] = max(f["files_now"] for f in rec["gold_files"].values())
            out["P5_after_optimize"] = max(f["files_after_optimize"] for f in rec["gold_files"].values())
            out["P6_peak_rss_mib"] = rec["memory_peak_mib"]
    if "backfill" in result:
        out["P3_orders"] = result["backfill"]["orders"]
        out["P3_kafka_to_gold_s"] = result["backfill"]["kafka_to_gold_s"]
        out["P3_ratio_to_raw_read"] = result["backfill"]["ratio_to_raw"]
    return out


def markdown(result: dict) -> str:
    sm, t = result["summary"], TARGETS
    mem = sm.get("P6_peak_rss_mib", {})
    gen = sm.get("generator_records_per_s", {})
    p2 = {k: sm.get(f"P2_{k}_gold_at_P1_rate_s", {}) for k in SYSTEMS}
    rows = [
        ("P1 sustained throughput", f"project {sm.get('P1_project_orders_per_s')} orders/s, peer "
         f"{sm.get('P1_peer_orders_per_s')} orders/s (+ as many logs and metrics for the project); generator "
         f"flat out {gen}; from_json+explode ceiling {sm.get('P1_ceiling_orders_per_s')} orders/s",
         f">= {t['P1_orders_per_s']} orders/s"),
        ("P2 gold latency at that rate", f"project p50/p99 {p2['project'].get('p50')}/{p2['project'].get('p99')} s; "
         f"peer {p2['peer'].get('p50')}/{p2['peer'].get('p99')} s", f"p99 <= {t['P2_e2e_p99_s']} s at 100 orders/s "
         "(bench.p2)"),
        ("P3 backfill", f"{sm.get('P3_orders')} orders in {sm.get('P3_kafka_to_gold_s')} s; "
         f"{sm.get('P3_ratio_to_raw_read')}x the raw Kafka->noop read", f"<= {t['P3_ratio']}x"),
        ("P4 recovery", f"project median {sm.get('P4_median_s')} s ({sm.get('P4_recovery_s')}), peer median "
         f"{sm.get('P4_peer_median_s')} s ({sm.get('P4_peer_recovery_s')}) from SIGKILL to every pre-kill order in gold",
         f"<= {t['P4_s']} s"),
        ("P4 with a warm standby", f"median {sm.get('P4_standby_median_s')} s ({sm.get('P4_standby_recovery_s')}) "
         f"from SIGKILL to every pre-kill order in gold; the standby owned every stage "
         f"{sm.get('P4_takeover_median_s')} s after the SIGKILL ({sm.get('P4_takeover_s')}) and every query had "
         f"committed its first batch after {sm.get('P4_takeover_first_batches_median_s')} s "
         f"({sm.get('P4_takeover_first_batches_s')}); waiting, it cost "
         f"{sm.get('P4_standby_waiting')}",
         "takeover <= 10 s; P4 <= live p99 + 10 s"),
        ("P5 small files", f"max {sm.get('P5_max_files_per_gold_table')} files per gold table "
         f"(no in-stream compaction); {sm.get('P5_after_optimize')} after OPTIMIZE", f"<= {t['P5_files']}"),
        ("P6 memory", f"Kafka {mem.get('kafka')} MiB, MinIO {mem.get('minio')} MiB, Spark app {mem.get('spark_app')} MiB",
         f"<= {t['P6_gib']} GiB"),
    ]
    head = (f"\n### {result['date']} - `{result['command']}`\n\n{result['machine']}\n\n"
            "| measure | result | target |\n| --- | --- | --- |\n")
    return head + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows)


def add_run_table(readme: Path, table: str) -> None:
    """Add a run's table at the end of the README's "## Runs" section (before the next section),
    or at its end when it has no such section."""
    text = readme.read_text() if readme.exists() else ""
    runs = text.find("\n## Runs\n")
    after = text.find("\n## ", runs + 1) if runs >= 0 else -1
    if after < 0:
        readme.write_text(text + table)
    else:
        readme.write_text(text[:after].rstrip("\n") + "\n\n" + table.strip("\n") + "\n" + text[after:])


def main(argv=None) -> int:
    from common.spark import get_spark

    def rates(v: str) -> list[float]:
        return [float(x) for x in v.split(",")]

    p = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--orders", type=int, default=300_000, help="P3 backfill size (orders; as many logs and metrics)")
    p.add_argument("--ladder", type=rates, default=[round(100 * 1.5 ** k) for k in range(10)],
                   help="producer rates to try, orders/s, ascending (default 100 and steps x1.5 up to 3,844)")
    p.add_argument("--step-seconds", type=float, default=180.0)
    p.add_argument("--systems", type=lambda v: v.split(","), default=list(SYSTEMS), help="P1: project,peer")
    p.add_argument("--producers", type=int, default=2, help="producer processes for the generator's maximum and P3")
    p.add_argument("--recovery-rate", type=float, default=100.0, help="P4: orders/s")
    p.add_argument("--kills", type=int, default=3, help="P4: SIGKILLs (median reported)")
    p.add_argument("--kill-after", type=float, default=30.0, help="P4: seconds into each recovery step")
    p.add_argument("--p4-systems", type=lambda v: v.split(","), default=["standby", "project", "peer"],
                   help="P4: standby (run all with --standby beside it), project, peer")
    p.add_argument("--skip", type=lambda v: set(v.split(",")), default=set(),
                   help="phases to leave out: p1,p4,p3")
    args = p.parse_args(argv)
    base, date, logdir = bench_start()
    result = {"date": date.isoformat(timespec="seconds"),
              "machine": f"{os.cpu_count()} cores, {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)}"
                         f" GiB, {platform.machine()}, Python {platform.python_version()}",
              "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
              "targets": TARGETS}
    out = results_file(date)

    def save() -> None:  # after every phase: a long run cut short keeps what it measured
        result["summary"] = summary(result)
        out.write_text(json.dumps(result, indent=1, default=str) + "\n")

    spark = get_spark(base, app_name="lakehouse-bench")  # idle while a system runs
    if "p1" not in args.skip:
        result["generator"] = generator_max(base, args.producers)
        result["p1"] = {}
        for system in args.systems:
            result["p1"][system] = ladder(spark, base, system, args, logdir)
            save()
        last = result["p1"][args.systems[-1]]  # its orders topic holds every order of its ladder
        result["ceiling"] = ceiling_from_json_explode(spark, base.with_overrides(topic_orders=last["topic_orders"]))
        save()
    if "p4" not in args.skip:
        result["recovery"] = recovery(spark, base, args, logdir)
        save()
    if "p3" not in args.skip:
        result["backfill"] = backfill_phase(spark, base, args.orders, args.producers)
        save()
    if args.skip:  # a partial run: its table is printed, bench/README.md keeps full runs only
        print(markdown(result))
    else:
        add_run_table(HERE / "README.md", markdown(result))
    print(json.dumps(result["summary"], indent=1))
    log(f"wrote {out.relative_to(ROOT)}{'' if args.skip else ' and a table in bench/README.md'}; app logs in {logdir.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
