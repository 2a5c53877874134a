"""P2 with its peer in the same run: event -> gold latency of the project and of a hand-written
minimal chain (``bench.peer``), one after the other, at the same producer rate.

    python -m bench.p2 [--rates 100,1000] [--seconds 90] [--warmup 20]

For each rate, first the peer then the project run as their own process on fresh topics and a
fresh lake prefix, while a producer sends orders (and as many logs and metrics records) at that
rate for ``--seconds``; this process only produces and, afterwards, reads. Latency per order:
its Kafka record timestamp -> the commit that made it visible in gold (``gold.orders_enriched``
for the project, the peer's gold table), orders of the first ``--warmup`` seconds left out. The
project runs with its defaults (what ``lakehouse run all`` does), the peer with its own tuning.
Writes ``bench/results/<date>-p2.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

from bench.measure import first_visible, peak_rss_mib, percentiles
from bench.run import HERE, ROOT, app_env, fresh, gold_latency_rows, log
from common.generator import GenOptions, produce
from common.settings import Settings
from common.stack import Stack, wait_until


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process tree (from /proc), for the per-process CPU figure."""
    from bench.measure import _descendants

    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in [pid, *_descendants(pid)]:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


_BATCH = re.compile(r" (\S+) batch (\d+): (\d+) rows in, \d+ rows/s, (\d+) ms(?: \(addBatch (\d+) ms\))?")


def batch_profile(log_text: str) -> dict[str, dict]:
    """Per query, from the app's progress lines: batches, median and p90 batch duration, median
    addBatch (the foreachBatch writes) - where a micro-batch's time goes."""
    per: dict[str, list[tuple[int, int, int]]] = {}
    for m in _BATCH.finditer(log_text):
        per.setdefault(m.group(1), []).append((int(m.group(3)), int(m.group(4)), int(m.group(5) or 0)))
    out = {}
    for q, rows in sorted(per.items()):
        data = [r for r in rows if r[0] > 0] or rows
        out[q] = {"batches": len(rows), "batch_ms": percentiles([float(r[1]) for r in data], (50, 90)),
                  "add_batch_ms_p50": percentiles([float(r[2]) for r in data], (50,))["p50"]}
    return out


def run_one(spark, base: Settings, system: str, rate: float, seconds: float, warmup: float, logdir) -> dict:
    from common import customers

    s = fresh(base, f"p2-{system}-{uuid.uuid4().hex[:6]}")
    customers.load(spark, s)
    cmd = [sys.executable, "-m", "bench.peer"] if system == "peer" else [sys.executable, "-m", "common.cli", "run", "all"]
    out = open(logdir / f"p2-{system}-{rate:g}.log", "w")
    count = int(rate * seconds)
    opts = GenOptions(topics=s.source_topics, count=count, rate=rate, seed=7, first_order_id=1, progress=False)
    proc = None
    try:
        # the project creates its tables before streaming; the peer's tables appear with its first
        # commits, so both are started with the producer already running
        t0 = time.time()
        producer = threading.Thread(target=produce, args=(s, opts), daemon=True)
        producer.start()
        proc = subprocess.Popen(cmd, env=app_env(s), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        cpu_start = time.time()
        peak = 0.0
        while producer.is_alive():
            producer.join(2)
            peak = max(peak, peak_rss_mib(proc.pid) or 0.0)
            if proc.poll() is not None:
                raise RuntimeError(f"{system} exited early; see {out.name}")
        t_end = time.time()
        gold_path = (f"{s.lake_root.rstrip('/')}/_peer/gold" if system == "peer"
                     else s.table_path("gold", "orders_enriched"))

        def gold_rows() -> int:
            try:
                return spark.read.format("delta").load(gold_path).count()
            except Exception:
                return 0
        wait_until(lambda: gold_rows() >= count or proc.poll() is not None, 600, f"{system} gold to catch up", 1.0)
        drain = time.time() - t_end
        cpu = _cpu_seconds(proc.pid)
        cpu_wall = time.time() - cpu_start
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    if system == "peer":
        from pyspark.sql import functions as F

        rows = (first_visible(spark, gold_path, ["kafka_timestamp"])
                .select((F.col("kafka_timestamp").cast("double") * 1000).alias("k"), "commit_ms").collect())
        pairs = [(r.k, r.commit_ms) for r in rows]
    else:
        pairs = gold_latency_rows(spark, s)
    lat = [(c - k) / 1000 for k, c in pairs if k >= (t0 + warmup) * 1000]
    res = {"system": system, "rate": rate, "seconds": seconds, "orders": count,
           "producer_orders_per_s": round(count / (t_end - t0), 1), "drain_s": round(drain, 1),
           "gold": percentiles(lat), "measured_orders": len(lat), "cpu_s_per_wall_s": round(cpu / cpu_wall, 2),
           "peak_rss_mib": round(peak)}
    if system == "project":
        res["queries"] = batch_profile(open(out.name).read())
    log(f"  {system} at {rate:g} orders/s: gold p50 {res['gold']['p50']} s / p99 {res['gold']['p99']} s "
        f"({len(lat)} orders), drained {res['drain_s']} s after the producer, {res['cpu_s_per_wall_s']} cores busy")
    return res


def main(argv=None) -> int:
    from common.runner import setup_logging
    from common.spark import get_spark

    p = argparse.ArgumentParser(prog="bench.p2", description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", type=lambda v: [float(x) for x in v.split(",")], default=[100.0, 1000.0])
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--warmup", type=float, default=45.0, help="seconds left out at the start (app start-up)")
    args = p.parse_args(argv)
    setup_logging()
    base = Settings.from_env()
    Stack(base).up()
    date = datetime.now(timezone.utc)
    logdir = ROOT / ".cache" / "bench" / date.strftime("%Y%m%dT%H%M%S")
    logdir.mkdir(parents=True, exist_ok=True)
    spark = get_spark(base, app_name="bench-p2")  # idle while the systems run
    results = []
    for rate in args.rates:
        for system in ("peer", "project"):
            results.append(run_one(spark, base, system, rate, args.seconds, args.warmup, logdir))
    out = HERE / "results" / f"{date.strftime('%Y-%m-%d')}-p2.json"
    out.write_text(json.dumps({"date": date.isoformat(timespec="seconds"), "command": "python -m bench.p2 "
                               + " ".join(argv if argv is not None else sys.argv[1:]), "results": results},
                              indent=1) + "\n")
    print("| rate (orders/s) | system | gold p50 s | gold p99 s | ratio p99 to peer | drain s | cores busy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    peers = {r["rate"]: r for r in results if r["system"] == "peer"}
    for r in results:
        peer = peers[r["rate"]]["gold"]["p99"]
        ratio = round(r["gold"]["p99"] / peer, 2) if peer and r["gold"]["p99"] else None
        print(f"| {r['rate']:g} | {r['system']} | {r['gold']['p50']} | {r['gold']['p99']} | {ratio} | "
              f"{r['drain_s']} | {r['cpu_s_per_wall_s']} |")
    log(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
