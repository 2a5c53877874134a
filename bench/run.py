"""The benchmark: one command, one run, every measurement side by side.

    make bench          # = python -m bench.run (the stack is started if it is not running)

Live phase (``run all`` as its own process, the way it runs in production, one Spark app):
  P1 throughput - a ladder of producer rates (orders/s, and as many logs and metrics), each held
     for ``--step-seconds``; a rate is *sustained* when the producer kept pace, gold got every valid
     order of the step, and the lag stayed bounded: orders of the step's last third waited (Kafka
     -> gold) at most 1.5x + 2 s as long as those of its first third. The ladder stops at the first
     rate that is not. Ceiling: Spark's batch rate for from_json +
     explode on the same orders, in the same run.
  P2 latency - per order, Kafka record timestamp -> the Delta commit that made it visible in
     bronze, silver and gold (``bench.measure.first_visible``); p50/p99 per rate.
  P4 recovery - during a further step at half the highest sustained rate, SIGKILL of the app and
     an immediate restart: seconds until every order produced before the kill is in gold.
  P5 small files - files per gold table after the live run (streaming writes do not compact),
     files the writers added in total, and after ``lakehouse maintain`` (OPTIMIZE).
  P6 memory - peak RSS (VmHWM) of Kafka, MinIO and the Spark app (Python driver + JVM).
Backfill phase:
  P3 - ``--orders`` orders (+ logs + metrics) from Kafka to gold with availableNow, against a raw
     Spark Kafka -> noop read of the same topics.

Writes ``bench/results/<date>.json`` and appends a Markdown table to ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from bench.measure import first_visible, peak_rss_mib, percentiles, table_files
from common.generator import GenOptions, generate, produce
from common.runner import run, setup_logging
from common.settings import Settings, env_var
from common.stack import Stack, wait_until

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FAULTS = {"duplicate_pct": 5, "late_pct": 2, "malformed_pct": 2}
ID_BLOCK = 10_000_000  # order ids of step i start at (i + 1) * ID_BLOCK
# Issue 11's targets (2 cores); P2 beside the peer is measured by bench.p2.
TARGETS = {"P1_orders_per_s": 3000, "P2_e2e_p99_s": 10, "P3_ratio": 6.0, "P4_s": 20, "P5_files": 64, "P6_gib": 6}


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


def fresh(base: Settings, tag: str) -> Settings:
    s = base.with_overrides(lake_root=f"{base.lake_root.rstrip('/')}/bench/{tag}",
                            topic_orders=f"{tag}-commandes-json", topic_logs=f"{tag}-logs-application",
                            topic_metrics=f"{tag}-metrics", topic_enriched=f"{tag}-commandes-enrichies")
    Stack(s).ensure_topics()
    return s


def app_env(s: Settings) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for name in ("lake_root", "topic_orders", "topic_logs", "topic_metrics", "topic_enriched", "shuffle_partitions",
                 "max_offsets_per_trigger"):
        env[env_var(name)] = str(getattr(s, name))
    return env


class App:
    """``lakehouse run all`` in its own process group."""

    def __init__(self, s: Settings, trigger: str, logdir: Path):
        self.s, self.trigger, self.logdir, self.n = s, trigger, logdir, 0
        self.proc: subprocess.Popen | None = None
        self.peak_mib = 0.0

    def start(self) -> None:
        self.n += 1
        out = open(self.logdir / f"app-{self.n}.log", "w")
        trigger = ["--trigger", self.trigger] if self.trigger else []  # none: the project's default
        self.proc = subprocess.Popen([sys.executable, "-m", "common.cli", "run", "all", *trigger],
                                     env=app_env(self.s), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def sample_memory(self) -> None:
        rss = peak_rss_mib(self.proc.pid if self.proc else None)
        self.peak_mib = max(self.peak_mib, rss or 0.0)

    def kill(self, sig=signal.SIGKILL) -> None:
        self.sample_memory()
        os.killpg(self.proc.pid, sig)
        self.proc.wait(timeout=120)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def valid_order_ids(s: Settings, opts: GenOptions) -> set[int]:
    """The orders of a step that must reach gold (computed offline from the same seed)."""
    ids = set()
    for topic, rec in generate(s, dataclasses.replace(opts, rate=0.0)):
        if topic == s.topic_orders and rec["fault"] in (None, "duplicate") and rec["order_id"] is not None:
            ids.add(rec["order_id"])
    return ids


def gold_count(spark, s: Settings, first_id: int) -> int:
    try:
        return (spark.read.format("delta").load(s.table_path("gold", "orders_enriched"))
                .where(f"order_id >= {first_id} AND order_id < {first_id + ID_BLOCK}").count())
    except Exception:
        return 0


def step_options(s: Settings, i: int, rate: float, seconds: float) -> GenOptions:
    return GenOptions(topics=s.source_topics, count=int(rate * seconds), rate=rate, seed=1000 + i,
                      first_order_id=(i + 1) * ID_BLOCK, progress=False, **FAULTS)


def run_step(spark, s: Settings, app: App, i: int, rate: float, seconds: float, warmup: float,
             kill_at: float | None = None) -> dict:
    opts = step_options(s, i, rate, seconds)
    expected = valid_order_ids(s, opts)
    step = {"rate": rate, "seconds": seconds, "first_id": opts.first_order_id, "valid_orders": len(expected)}
    err: list[BaseException] = []

    def producer():
        try:
            produce(s, opts)
        except BaseException as e:  # noqa: BLE001
            err.append(e)

    t0 = time.time()
    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    if kill_at is not None:
        time.sleep(kill_at)  # the moment of the fault
        app.kill()
        step["killed_at"] = time.time()
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
        wait_until(lambda: gold_count(spark, s, opts.first_order_id) >= len(expected) or not app.alive(),
                   900, "gold to catch up", interval=1.0)
    except Exception:  # reported as caught_up = False
        pass
    step["drain_s"] = round(time.time() - t_end, 1)
    step["caught_up"] = app.alive() and gold_count(spark, s, opts.first_order_id) >= len(expected)
    # Lag bounded: orders at the end of the step waited no longer than those at its start.
    lat = [(k, (c - k) / 1000) for k, c in gold_latency_rows(spark, s) if (t0 + warmup) * 1000 <= k <= t_end * 1000]
    lat.sort()
    third = len(lat) // 3
    first, last = ([x for _, x in lat[:third]], [x for _, x in lat[-third:]]) if third else ([], [])
    step["gold_p50_first_third_s"] = percentiles(first)["p50"]
    step["gold_p50_last_third_s"] = percentiles(last)["p50"]
    step["sustained"] = bool(step["caught_up"] and third and step["producer_orders_per_s"] >= 0.95 * rate
                             and percentiles(last)["p50"] <= 1.5 * percentiles(first)["p50"] + 2)
    return step


def _order_commits(spark, s: Settings):
    """(silver orders with Kafka time in ms and commit time, gold orders_enriched commit times)."""
    from pyspark.sql import functions as F

    silver = first_visible(spark, s.table_path("silver", "orders"), ["order_id", "kafka_timestamp"]).select(
        "order_id", (F.col("kafka_timestamp").cast("double") * 1000).alias("kafka_ms"), "commit_ms")
    gold = first_visible(spark, s.table_path("gold", "orders_enriched"), ["order_id"]).join(
        silver.select("order_id", "kafka_ms"), "order_id")
    return silver, gold


def gold_latency_rows(spark, s: Settings) -> list[tuple[float, float]]:
    return [(r.kafka_ms, r.commit_ms) for r in _order_commits(spark, s)[1].collect()]


def latencies(spark, s: Settings, steps: list[dict], warmup: float) -> None:
    """Add per-hop and event-to-gold p50/p99 (seconds) to every step."""
    from pyspark.sql import functions as F

    bronze = first_visible(spark, s.table_path("bronze", s.bronze_table_for(s.topic_orders)), ["timestamp"])
    bronze = bronze.select((F.col("timestamp").cast("double") * 1000).alias("kafka_ms"), "commit_ms")
    silver, gold = _order_commits(spark, s)
    b_rows = bronze.collect()
    s_rows = silver.collect()
    g_rows = gold.collect()
    for st in steps:
        lo_ms, hi_ms = (st["t0"] + warmup) * 1000, st["t_end"] * 1000
        in_step = lambda r: lo_ms <= r.kafka_ms <= hi_ms  # noqa: E731
        st["latency_s"] = {
            "bronze": percentiles([(r.commit_ms - r.kafka_ms) / 1000 for r in b_rows if in_step(r)]),
            "silver": percentiles([(r.commit_ms - r.kafka_ms) / 1000 for r in s_rows if in_step(r)]),
            "gold": percentiles([(r.commit_ms - r.kafka_ms) / 1000 for r in g_rows if in_step(r)]),
        }
        if "killed_at" in st:
            k_ms = st["killed_at"] * 1000
            before = [r.commit_ms for r in g_rows if st["t0"] * 1000 <= r.kafka_ms <= k_ms]
            st["recovery_s"] = round((max(before) - k_ms) / 1000, 1) if before else None


def ceiling_from_json_explode(spark, s: Settings) -> dict:
    """Spark's batch rate for from_json + explode of the same order records (the P1 ceiling)."""
    from pyspark.sql import functions as F

    from silver.transforms import KINDS

    raw = (spark.read.format("kafka").option("kafka.bootstrap.servers", s.kafka_bootstrap_servers)
           .option("subscribe", s.topic_orders).option("startingOffsets", "earliest").load())
    raw.select("value").write.format("noop").mode("overwrite").save()  # warm the connection
    t = time.monotonic()
    parsed = raw.select(F.from_json(F.col("value").cast("string"), KINDS["orders"]["raw"]).alias("o"))
    parsed.select("o.order_id", F.explode("o.items").alias("item")).write.format("noop").mode("overwrite").save()
    seconds = time.monotonic() - t
    n = raw.count()
    return {"orders": n, "seconds": round(seconds, 1), "orders_per_s": round(n / seconds)}


def live_phase(base: Settings, args, logdir: Path) -> dict:
    from common import customers
    from common.spark import get_spark

    s = fresh(base, f"live-{uuid.uuid4().hex[:6]}")
    spark = get_spark(s, app_name="lakehouse-bench")
    customers.load(spark, s)
    app = App(s, args.trigger, logdir)
    app.start()
    stack = Stack(s)
    out: dict = {"trigger": args.trigger, "lake_root": s.lake_root}
    try:
        log(f"live phase: run all --trigger {args.trigger!r}; warm-up")
        warm = run_step(spark, s, app, 0, 10, 30, args.warmup)
        log(f"  warm-up drained in {warm['drain_s']} s")
        steps = []
        for i, rate in enumerate(args.ladder, start=1):
            st = run_step(spark, s, app, i, rate, args.step_seconds, args.warmup)
            steps.append(st)
            log(f"  {rate:g} orders/s for {args.step_seconds:g} s: producer {st['producer_orders_per_s']}/s, "
                f"gold p50 {st['gold_p50_first_third_s']} s (first third) -> {st['gold_p50_last_third_s']} s (last "
                f"third), drained {st['drain_s']} s after: {'sustained' if st['sustained'] else 'NOT sustained'}")
            if not st["sustained"]:
                break
        sustained = [st["rate"] for st in steps if st["sustained"]]
        best = max(sustained) if sustained else 0.0
        rec_rate = max(best / 2, args.ladder[0] / 2)
        log(f"recovery: {rec_rate:g} orders/s, SIGKILL after {args.kill_after:g} s")
        rec = run_step(spark, s, app, len(args.ladder) + 1, rec_rate, args.kill_after + 60, args.warmup,
                       kill_at=args.kill_after)
        memory = {"kafka": peak_rss_mib(stack.pid("kafka")), "minio": peak_rss_mib(stack.pid("minio"))}
        app.sample_memory()
        memory["spark_app"] = app.peak_mib
        app.kill(signal.SIGTERM)
        latencies(spark, s, steps + [rec], args.warmup)
        files = {}
        from common.tables import maintain
        from gold.transforms import KPIS

        for name in [k.name for k in KPIS] + ["orders_enriched"]:
            path = s.table_path("gold", name)
            files[name] = table_files(spark, path)
            files[name]["files_after_optimize"] = maintain(spark, path)["files_after"]
        ceiling = ceiling_from_json_explode(spark, s)
        out.update(steps=steps, recovery=rec, memory_peak_mib=memory, gold_files=files, ceiling=ceiling,
                   sustained_orders_per_s=best)
    finally:
        if app.alive():
            app.kill()
    return out


def backfill_phase(base: Settings, orders: int) -> dict:
    from common import customers
    from common.spark import get_spark

    s = fresh(base, f"backfill-{uuid.uuid4().hex[:6]}")
    log(f"backfill phase: producing {orders} orders + logs + metrics")
    t = time.monotonic()
    produce(s, GenOptions(topics=s.source_topics, count=orders, seed=1, progress=False, **FAULTS))
    produce_s = time.monotonic() - t
    spark = get_spark(s, app_name="lakehouse-bench")
    customers.load(spark, s)
    raw = (spark.readStream.format("kafka").option("kafka.bootstrap.servers", s.kafka_bootstrap_servers)
           .option("subscribe", ",".join(s.source_topics)).option("startingOffsets", "earliest").load())
    t = time.monotonic()
    q = (raw.writeStream.format("noop").trigger(availableNow=True)
         .option("checkpointLocation", f"{s.checkpoints}/_bench_noop").start())
    q.awaitTermination()
    raw_s = time.monotonic() - t
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
    live, back = result.get("live", {}), result.get("backfill", {})
    out = {}
    if live:
        best = live["sustained_orders_per_s"]
        out["P1_sustained_orders_per_s"] = best
        out["P1_ceiling_orders_per_s"] = live["ceiling"]["orders_per_s"]
        out["P1_ratio"] = round(best / live["ceiling"]["orders_per_s"], 3)
        at = [st for st in live["steps"] if st["sustained"]]
        if at:
            st = max(at, key=lambda x: x["rate"])
            out["P2_at_orders_per_s"] = st["rate"]
            out["P2_latency_s"] = st["latency_s"]
        out["P4_recovery_s"] = live["recovery"].get("recovery_s")
        out["P5_max_files_per_gold_table"] = max(f["files_now"] for f in live["gold_files"].values())
        out["P5_after_optimize"] = max(f["files_after_optimize"] for f in live["gold_files"].values())
        out["P6_peak_rss_mib"] = live["memory_peak_mib"]
    if back:
        out["P3_kafka_to_gold_s"] = back["kafka_to_gold_s"]
        out["P3_ratio_to_raw_read"] = back["ratio_to_raw"]
    return out


def markdown(result: dict) -> str:
    sm, t = result["summary"], TARGETS
    lat = sm.get("P2_latency_s", {})
    e2e = lat.get("gold", {})
    mem = sm.get("P6_peak_rss_mib", {})
    rows = [
        ("P1 sustained throughput", f"{sm.get('P1_sustained_orders_per_s')} orders/s (+ as many logs and metrics); "
         f"ceiling {sm.get('P1_ceiling_orders_per_s')} orders/s; ratio {sm.get('P1_ratio')}",
         f">= {t['P1_orders_per_s']} orders/s"),
        ("P2 latency (at P1 rate)", f"event->bronze p50/p99 {lat.get('bronze', {}).get('p50')}/"
         f"{lat.get('bronze', {}).get('p99')} s; ->silver {lat.get('silver', {}).get('p50')}/"
         f"{lat.get('silver', {}).get('p99')} s; ->gold {e2e.get('p50')}/{e2e.get('p99')} s",
         f"gold p99 <= {t['P2_e2e_p99_s']} s at 100 orders/s (and <= 1.5x the peer: bench.p2)"),
        ("P3 backfill", f"{result.get('backfill', {}).get('orders')} orders in {sm.get('P3_kafka_to_gold_s')} s; "
         f"{sm.get('P3_ratio_to_raw_read')}x the raw Kafka->noop read", f"<= {t['P3_ratio']}x"),
        ("P4 recovery", f"{sm.get('P4_recovery_s')} s from SIGKILL to every pre-kill order in gold", f"<= {t['P4_s']} s"),
        ("P5 small files", f"max {sm.get('P5_max_files_per_gold_table')} files per gold table "
         f"(no in-stream compaction); {sm.get('P5_after_optimize')} after OPTIMIZE", f"<= {t['P5_files']}"),
        ("P6 memory", f"Kafka {mem.get('kafka')} MiB, MinIO {mem.get('minio')} MiB, Spark app {mem.get('spark_app')} MiB",
         f"<= {t['P6_gib']} GiB"),
    ]
    head = (f"\n### {result['date']} - `{result['command']}`\n\n{result['machine']}; trigger "
            f"`{result.get('live', {}).get('trigger')}`\n\n| measure | result | target |\n| --- | --- | --- |\n")
    return head + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--orders", type=int, default=30000, help="P3 backfill size (orders; as many logs and metrics)")
    p.add_argument("--ladder", type=lambda v: [float(x) for x in v.split(",")], default=[10.0, 20.0, 40.0, 80.0],
                   help="producer rates to try, orders/s, ascending (default 10,20,40,80)")
    p.add_argument("--step-seconds", type=float, default=120.0)
    p.add_argument("--warmup", type=float, default=20.0, help="seconds of each step left out of the latencies")
    p.add_argument("--kill-after", type=float, default=30.0, help="P4: seconds into the recovery step")
    p.add_argument("--trigger", default=None, help="trigger of the live app (default: the project's default, "
                                                   "LAKEHOUSE_TRIGGER)")
    p.add_argument("--skip-live", action="store_true")
    p.add_argument("--skip-backfill", action="store_true")
    args = p.parse_args(argv)
    base, date, logdir = bench_start()
    result = {"date": date.isoformat(timespec="seconds"),
              "machine": f"{os.cpu_count()} cores, {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)}"
                         f" GiB, {platform.machine()}, Python {platform.python_version()}",
              "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
              "targets": TARGETS}
    if not args.skip_live:
        result["live"] = live_phase(base, args, logdir)
    if not args.skip_backfill:
        result["backfill"] = backfill_phase(base, args.orders)
    result["summary"] = summary(result)
    out = HERE / "results" / f"{result['date'][:10]}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    with open(HERE / "README.md", "a") as f:
        f.write(markdown(result))
    print(json.dumps(result["summary"], indent=1))
    log(f"wrote {out.relative_to(ROOT)} and a table in bench/README.md; app logs in {logdir.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
