"""P2 with its peer in the same run: event -> gold latency of the project and of a hand-written
minimal chain (``bench.peer``), one after the other, at the same producer rate.

    python -m bench.p2 [--rates 100,1000] [--seconds 90] [--warmup 30] [--repeat 3]

For each rate, first the peer then the project run as their own process on fresh topics and a
fresh lake prefix. A warm-up phase (``--warmup`` seconds of load at that rate, until gold has it)
covers start-up; then a producer sends orders (and as many logs and metrics records) at that
rate for ``--seconds``, and this process waits until gold has them all, reading nothing else
meanwhile. Latency per measured order: its Kafka record timestamp -> the commit that made it
visible in gold (``gold.orders_enriched`` for the project, the peer's gold table), and for the
project the event -> KPI latency (``bench.run.kpi_pairs``). The project runs with its defaults
(what ``lakehouse run all`` does), the peer with its own tuning. Every (rate, system) runs
``--repeat`` times; the table reports medians and the p99's spread.
Writes ``bench/results/<date>-p2.json`` (``<date>T<time>-p2.json`` for a second run that day) and
prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

from bench.measure import cpu_seconds, machine_cores_busy, machine_cpu, peak_rss_mib, percentiles
from bench.run import (ROOT, SYSTEMS, app_env, bench_start, fresh, gold_count, gold_pairs, kpi_pairs, log,
                       results_file)
from devstack.generator import GenOptions, produce
from common.settings import Settings
from devstack.stack import wait_until


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


MEASURED = 10_000_000  # order ids of the measured phase start here; the warm-up's below


def run_one(spark, base: Settings, system: str, rate: float, seconds: float, warmup: float, logdir,
            tag: str = "p2", after=None) -> dict:
    """Start the system, warm it up (``warmup`` seconds at ``rate``, until gold has those orders),
    then measure ``seconds`` at ``rate``: latency of the measured orders, drain time, CPU, memory.
    ``after(settings, measured_from, measured_to)``, once the system stopped, adds its own figures
    over the measured phase (bench.p7)."""
    from silver import customers

    s = fresh(base, f"{tag}-{system}-{uuid.uuid4().hex[:6]}")
    customers.load(spark, s)
    cmd = [sys.executable, *SYSTEMS[system]]
    out = open(logdir / f"{tag}-{system}-{rate:g}.log", "w")
    proc = subprocess.Popen(cmd, env=app_env(s), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)

    def phase(first_id: int, count: int, seed: int) -> tuple[float, float, float]:
        opts = GenOptions(topics=s.source_topics, count=count, rate=rate, seed=seed, first_order_id=first_id,
                          progress=False)
        t0 = time.time()
        produce(s, opts)
        t_end = time.time()
        try:
            wait_until(lambda: gold_count(spark, s, system, first_id, first_id + count - 1) >= count
                       or proc.poll() is not None, 900, f"{system} gold to catch up", 3.0)
        except Exception as e:  # not caught up: reported, with the latencies of what did arrive
            log(f"  {system}: {e}")
        if proc.poll() is not None:
            raise RuntimeError(f"{system} exited; see {out.name}")
        return t0, t_end, time.time() - t_end

    try:
        phase(1, int(rate * warmup), 1)  # start-up, first batches, JIT: not measured
        cpu0, wall0, machine0 = cpu_seconds(proc.pid), time.time(), machine_cpu()
        t0, t_end, drain = phase(MEASURED, int(rate * seconds), 7)
        cpu = (cpu_seconds(proc.pid) - cpu0) / (time.time() - wall0)
        machine = machine_cores_busy(machine0, machine_cpu())  # the producer, broker and MinIO too
        peak = peak_rss_mib(proc.pid) or 0.0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    lat = [(c - k) / 1000 for k, c in gold_pairs(spark, s, system, MEASURED)]
    count = int(rate * seconds)
    res = {"system": system, "rate": rate, "seconds": seconds, "orders": count,
           "producer_orders_per_s": round(count / (t_end - t0), 1), "drain_s": round(drain, 1),
           "gold": percentiles(lat), "measured_orders": len(lat), "caught_up": len(lat) >= count, "cpu_s_per_wall_s": round(cpu, 2),
           "machine_cores_busy": machine, "peak_rss_mib": round(peak)}
    if after is not None:
        res.update(after(s, t0, t_end + drain))
    if system == "project":
        res["queries"] = batch_profile(open(out.name).read())
        res["kpi_customer_minute_totals"] = percentiles([(c - k) / 1000 for k, c in kpi_pairs(spark, s, MEASURED)])
        res["kpi_final_customer_minute_totals"] = percentiles(  # closed windows only: window + watermark later
            [(c - k) / 1000 for k, c in kpi_pairs(spark, s, MEASURED, final=True)])
    log(f"  {system} at {rate:g} orders/s: gold p50 {res['gold']['p50']} s / p99 {res['gold']['p99']} s "
        f"({len(lat)} orders), drained {res['drain_s']} s after the producer, {res['cpu_s_per_wall_s']} cores busy "
        f"(the whole machine {machine} of {os.cpu_count()})")
    return res


def spread(results: list[dict]) -> list[dict]:
    """Per (rate, system): medians over the repetitions, the p99's min and max, and the ratio of the
    median p99 to the peer's."""
    import statistics

    def med(values):
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 2) if values else None

    rows = []
    for key in dict.fromkeys((r["rate"], r["system"]) for r in results):
        runs = [r for r in results if (r["rate"], r["system"]) == key]
        p99 = [r["gold"]["p99"] for r in runs if r["gold"]["p99"] is not None]
        rows.append({"rate": key[0], "system": key[1], "runs": len(runs), "p50": med(r["gold"]["p50"] for r in runs),
                     "p99": med(p99), "p99_min": min(p99, default=None), "p99_max": max(p99, default=None),
                     "kpi_p99": med(r.get("kpi_customer_minute_totals", {}).get("p99") for r in runs),
                     "drain_s": med(r["drain_s"] for r in runs), "cores": med(r["cpu_s_per_wall_s"] for r in runs),
                     "machine": med(r.get("machine_cores_busy") for r in runs)})
    peers = {r["rate"]: r["p99"] for r in rows if r["system"] == "peer"}
    for r in rows:
        r["ratio_to_peer"] = round(r["p99"] / peers[r["rate"]], 2) if peers.get(r["rate"]) and r["p99"] else None
    return rows


def main(argv=None) -> int:
    from common.spark import get_spark

    p = argparse.ArgumentParser(prog="bench.p2", description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", type=lambda v: [float(x) for x in v.split(",")], default=[100.0, 1000.0])
    p.add_argument("--seconds", type=float, default=90.0, help="seconds of measured load per rate")
    p.add_argument("--systems", type=lambda v: v.split(","), default=["peer", "project"],
                   help="which to run (default peer,project; the ratio needs both)")
    p.add_argument("--warmup", type=float, default=30.0,
                   help="seconds of load before the measured phase (start-up, first batches), not measured")
    p.add_argument("--repeat", type=int, default=3, help="repetitions of every (rate, system); spread reported")
    args = p.parse_args(argv)
    base, date, logdir = bench_start()
    spark = get_spark(base, app_name="bench-p2")  # idle while the systems run
    results = []
    out = results_file(date, "-p2")
    for rep in range(1, args.repeat + 1):
        for rate in args.rates:
            for system in args.systems:
                results.append(dict(run_one(spark, base, system, rate, args.seconds, args.warmup, logdir), rep=rep))
                out.write_text(json.dumps({"date": date.isoformat(timespec="seconds"), "command": "python -m bench.p2 "
                                           + " ".join(argv if argv is not None else sys.argv[1:]),
                                           "results": results, "summary": spread(results)}, indent=1) + "\n")
    print("| rate (orders/s) | system | gold p50 s | gold p99 s (median; min-max of runs) | p99 vs peer | "
          "KPI p99 s | drain s | cores busy (app) | cores busy (machine) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in spread(results):
        print(f"| {r['rate']:g} | {r['system']} | {r['p50']} | {r['p99']} ({r['p99_min']}-{r['p99_max']}) | "
              f"{r['ratio_to_peer']} | {r['kpi_p99']} | {r['drain_s']} | {r['cores']} | {r['machine']} |")
    log(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
