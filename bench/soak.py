"""Soak: ``lakehouse run all`` live under load for an hour, sampled every minute.

    make soak                              # 60 minutes
    python -m bench.soak --minutes 10      # a shorter try

The project runs with its defaults (``lakehouse run all``, its own process, fresh topics and lake
prefix) fed at ``--rate`` orders/s plus as many logs and metrics records/s (default: half the
highest rate the benchmark's P1 found sustained), with 5 % duplicates, 2 % late and 2 % malformed
records, for ``--minutes``. Every ``--sample-seconds`` the soak records, without a Spark session
of its own (MinIO listings, delta-rs, /proc, Kafka offsets):

* event -> gold: per order, Kafka timestamp -> the commit that added it to
  ``gold.orders_enriched`` (the Delta log's ``add`` actions, read as they appear; the Kafka
  timestamp from ``silver.orders``), reported per minute of Kafka time as p50/p99;
* records behind Kafka: the topics' end offsets minus bronze's last committed batch's offsets;
* the Spark app's resident memory (VmRSS of its process tree) and CPU cores busy;
* per table: files and bytes in its snapshot, Delta log version, ``_delta_log`` size;
* per query, from the pipeline's event log (``ops.pipeline_events_<stage>``, read with delta-rs):
  its state store's rows and memory at its last batch, and its batches' ``durationMs`` since the
  last sample (count, p50, max), so the bottleneck of a slow minute is visible;
* per query: checkpoint folder size, and its ``state/`` folder (the state store on disk).

When the load ends it waits for gold to take every order, stops the app (SIGTERM), and checks the
lake against the generator's ledger in one pass (``tests.oracle.RunningOracle``): bronze holds
every record once, silver's counts and every gold KPI equal the recomputation.

Bounds (pass/fail), with W = 10 minutes (a quarter of a shorter run) and a warm-up of twice the
longest watermark delay plus 2 minutes (12 minutes with the defaults; at most a third of a shorter
run): a dedup key lives 2 x its source's delay of processing time (``silver.transforms.dedupe``),
so only after that does the state hold a full set of keys, and it can only be judged from then.
Event -> gold p99 of the last W minutes <= 1.5x that of the first W; peak RSS and state rows of
the last W minutes <= 1.2x those of the W minutes after the warm-up (the state operators' rows
are bounded by the watermarks; RSS by the heap once the JVM has grown into it). The ``state/``
folders are reported, not judged: on disk RocksDB keeps every version of the last 100 batches
(``spark.sql.streaming.minBatchesToRetain``), so their size follows the batch count until then,
not the watermark. Files per table
never above 2 x LAKEHOUSE_COMPACT_EVERY (+ 10): an append adds at most a file per shuffle
partition (2) and the writer compacts every LAKEHOUSE_COMPACT_EVERY commits; gold equals the
oracle. Writes ``bench/results/<date>-soak.json``, ``-soak.md`` and ``-soak.png``.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.measure import cpu_seconds, percentiles, rss_mib
from bench.run import HERE, ROOT, App, app_env, bench_start, fresh, log, results_file
from app import dataflow
from common import pipeline
from common.clients import kafka_consumer, minio_client
from common.settings import OPS, Settings, interval_seconds, s3_location
from devstack.generator import GenOptions, produce

FAULTS = {"duplicate_pct": 5.0, "late_pct": 2.0, "malformed_pct": 2.0}


def default_rate() -> float:
    """Half the highest sustained project rate any ``bench.run`` result recorded (else 100)."""
    best = 0.0
    for f in (HERE / "results").glob("*.json"):
        try:
            best = max(best, float(json.loads(f.read_text()).get("summary", {}).get("P1_project_orders_per_s") or 0))
        except (ValueError, AttributeError):
            continue
    return best / 2 if best else 100.0


class Lake:
    """What the soak reads from MinIO and delta-rs, incrementally where it grows."""

    def __init__(self, settings: Settings):
        self.s = settings
        self.client = minio_client(settings)
        self._after: dict[str, str] = {}          # table key -> last _delta_log json read
        self.kafka_ms: dict[int, float] = {}      # order_id -> Kafka timestamp (silver.orders)
        self.silver_rows = 0                      # rows of silver.orders read (a duplicate counts twice)
        self.gold: list[tuple[int, float]] = []   # (order_id, gold commit ms)
        self._batches: dict[str, int] = {}        # query -> last batch id read from the event log

    def size(self, path: str) -> tuple[int, int]:
        """(objects, bytes) under ``path`` (``s3a://bucket/key``)."""
        n = b = 0
        bucket, prefix = s3_location(path)
        for o in self.client.list_objects(bucket, prefix=prefix + "/", recursive=True):
            n, b = n + 1, b + (o.size or 0)
        return n, b

    def new_adds(self, path: str, columns: list[str]):
        """(commit ms, rows of ``columns``) of every data file added since the last call."""
        import pyarrow.parquet as pq
        from urllib.parse import unquote

        bucket, key = s3_location(path)
        names = [o.object_name for o in self.client.list_objects(
            bucket, prefix=f"{key}/_delta_log/", start_after=self._after.get(key, ""))
            if o.object_name.endswith(".json")]
        for name in sorted(names):
            lines = self.client.get_object(bucket, name).read().decode().splitlines()
            actions = [json.loads(x) for x in lines if x.strip()]
            ms = next(a["commitInfo"]["timestamp"] for a in actions if "commitInfo" in a)
            for a in actions:
                if "add" in a and a["add"].get("dataChange"):
                    data = self.client.get_object(bucket, f"{key}/{unquote(a['add']['path'])}").read()
                    yield ms, pq.read_table(io.BytesIO(data), columns=columns).to_pylist()
            self._after[key] = name

    def follow_orders(self) -> None:
        """Read the new commits of silver.orders (Kafka timestamps) and gold.orders_enriched."""
        for _, rows in self.new_adds(self.s.table_path("silver", "orders"), ["order_id", "kafka_timestamp"]):
            self.silver_rows += len(rows)
            for r in rows:
                self.kafka_ms[r["order_id"]] = r["kafka_timestamp"].timestamp() * 1000
        for ms, rows in self.new_adds(self.s.table_path("gold", "orders_enriched"), ["order_id"]):
            self.gold += [(r["order_id"], ms) for r in rows]

    def latencies(self) -> list[tuple[float, float]]:
        """(Kafka ms, seconds to gold) per order in gold."""
        return [(self.kafka_ms[o], (ms - self.kafka_ms[o]) / 1000) for o, ms in self.gold if o in self.kafka_ms]

    def table(self, name: str) -> dict:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        from common.deltars import storage_options, uri

        path = self.s.table_path(*name.split(".", 1))
        try:
            dt = DeltaTable(uri(path), storage_options=storage_options(self.s, path))
        except TableNotFoundError:
            return {}
        import pyarrow as pa

        sizes = pa.table(dt.get_add_actions(flatten=True)).column("size_bytes").to_pylist()
        log_n, log_b = self.size(f"{path}/_delta_log")
        return {"version": dt.version(), "files": len(sizes), "bytes": sum(sizes), "log_files": log_n,
                "log_bytes": log_b}

    def behind(self) -> int | None:
        """Kafka end offsets minus bronze's last committed batch's offsets, all source topics."""
        from kafka import TopicPartition

        flow = dataflow.flow(self.s, "bronze")
        bucket, cp = s3_location(flow.checkpoint)
        done = [int(o.object_name.rsplit("/", 1)[-1]) for o in
                self.client.list_objects(bucket, prefix=f"{cp}/commits/")
                if o.object_name.rsplit("/", 1)[-1].isdigit()]
        if not done:
            return None
        text = self.client.get_object(bucket, f"{cp}/offsets/{max(done)}").read().decode()
        have = json.loads(text.splitlines()[2])  # v1, batch metadata, the Kafka source's offsets
        consumer = kafka_consumer(self.s, "lakehouse-soak")
        try:
            tps = [TopicPartition(t, int(p)) for t, parts in have.items() for p in parts]
            ends = consumer.end_offsets(tps)
        finally:
            consumer.close()
        return sum(ends[tp] - have[tp.topic][str(tp.partition)] for tp in tps)

    def queries(self) -> dict[str, dict]:
        """Per query, from the event log: its state store's rows and memory at its last logged
        batch, and the batches logged since the last call (count, ``durationMs`` p50 and max)."""
        from common.eventlog import VIEW
        from serving.native import NativeLake

        rows = NativeLake(self.s).rows(f"{OPS}.{VIEW}", order_by="batch_id",  # a new one: the log as it is now
                                       columns="query, batch_id, duration_ms, state_rows, state_memory_bytes")
        by: dict[str, list[dict]] = {}
        for r in rows:
            by.setdefault(r["query"], []).append(r)
        out: dict[str, dict] = {}
        for q, mine in by.items():
            seen = self._batches.get(q, -1)
            new = [r["duration_ms"] for r in mine if r["batch_id"] > seen and r["duration_ms"] is not None]
            last = mine[-1]
            self._batches[q] = last["batch_id"]
            out[q] = {"batch": last["batch_id"], "state_rows": last["state_rows"],
                      "state_memory_bytes": last["state_memory_bytes"], "batches": len(new),
                      "duration_p50_ms": percentiles(new, (50,))["p50"], "duration_max_ms": max(new, default=None)}
        return out


def tables_of(s: Settings) -> list[str]:
    from common.eventlog import table_name

    names = [str(t) for f in dataflow.graph(s) for t in f.tables]
    return names + [f"{OPS}.{table_name(stage)}" for stage in pipeline.STAGES]


def label(s: Settings, name: str) -> str:
    """A table's catalog name without the run's topic prefix (bronze.orders)."""
    return next((f"bronze.{src.kind}" for src in s.sources if name == f"bronze.{src.bronze_table}"), name)


def sample(lake: Lake, app: App, t0: float, cpu: list[float]) -> dict:
    now = time.time()
    row: dict = {"t_min": round((now - t0) / 60, 2), "rss_mib": rss_mib(app.proc.pid) if app.alive() else None}
    c = cpu_seconds(app.proc.pid) if app.alive() else None
    if c is not None:
        row["cores_busy"] = round((c - cpu[0]) / max(now - cpu[1], 1e-9), 2)
        cpu[:] = [c, now]
    row["records_behind"] = lake.behind()
    lake.follow_orders()
    row["orders_in_gold"] = len(lake.gold)
    row["tables"] = {label(lake.s, name): lake.table(name) for name in tables_of(lake.s)}
    row["queries"] = lake.queries()
    row["checkpoints"] = {}
    for f in dataflow.graph(lake.s):
        row["checkpoints"][f.name] = {"bytes": lake.size(f.checkpoint)[1],
                                      "state_bytes": lake.size(f"{f.checkpoint}/state")[1]}
    return row


def per_minute(lat: list[tuple[float, float]], t0: float) -> list[dict]:
    """p50/p99 event -> gold per minute of Kafka time since ``t0``."""
    by: dict[int, list[float]] = {}
    for kms, s in lat:
        by.setdefault(int((kms / 1000 - t0) // 60), []).append(s)
    return [{"minute": m, "orders": len(v), **percentiles(v)} for m, v in sorted(by.items()) if m >= 0]


def warmup_minutes(s: Settings, minutes: float) -> float:
    """Until the dedup state holds a full set of keys: 2 x the longest delay, plus 2 minutes of
    start-up; at most a third of the run."""
    return min(2 * interval_seconds(s.dedup_horizon) / 60 + 2, minutes / 3)


def judge(result: dict, minutes: float, compact_every: int, warm: float) -> dict:
    w = min(10.0, minutes / 4)
    lat = result["latency_per_minute"]
    load = [m for m in lat if m["minute"] < minutes]

    def p99(lo, hi):
        vals = [x for m in load if lo <= m["minute"] < hi for x in [m["p99"]] if x is not None]
        return max(vals) if vals else None

    samples = result["samples"]

    def peak(key, lo, hi):
        vals = [key(r) for r in samples if lo <= r["t_min"] < hi and key(r) is not None]
        return max(vals) if vals else None

    def state(r):
        rows = [q["state_rows"] for q in r.get("queries", {}).values() if q.get("state_rows") is not None]
        return sum(rows) if rows else None

    def disk(r):
        return sum(c["state_bytes"] for c in r["checkpoints"].values())

    def rss(r):
        return r["rss_mib"]

    end = minutes
    first_p99, last_p99 = p99(0, w), p99(end - w, end)
    bounds = {
        "latency": {"first_p99_s": first_p99, "last_p99_s": last_p99,
                    "ok": bool(first_p99 and last_p99 and last_p99 <= 1.5 * first_p99),
                    "rule": f"max minute-p99 of the last {w:g} min <= 1.5x that of the first {w:g} min"},
    }
    for name, key in (("rss", rss), ("state", state)):
        base, last = peak(key, warm, warm + w), peak(key, end - w, end + 0.01)
        bounds[name] = {"after_warmup": base, "last": last, "ok": bool(base and last and last <= 1.2 * base),
                        "rule": f"peak of the last {w:g} min <= 1.2x the peak of minutes {warm:g}-{warm + w:g}"}
    bounds["state_on_disk"] = {"after_warmup": peak(disk, warm, warm + w), "last": peak(disk, end - w, end + 0.01),
                               "ok": True, "rule": "reported, not judged: RocksDB keeps the last 100 batches' "
                                                   "versions (minBatchesToRetain)"}
    limit = 2 * compact_every + 10
    most = {t: max((r["tables"].get(t, {}).get("files", 0) for r in samples), default=0)
            for t in (samples[-1]["tables"] if samples else {})}
    bounds["files"] = {"max_files_per_table": max(most.values(), default=0), "limit": limit,
                       "per_table": most, "ok": all(n <= limit for n in most.values()),
                       "rule": "files per table never above 2 x LAKEHOUSE_COMPACT_EVERY + 10"}
    bounds["oracle"] = {"ok": result.get("oracle", {}).get("ok", False)}
    return bounds


def check_against_ledger(spark, s: Settings, ledger: Path) -> dict:
    """The lake against the ledger, in one pass over it (counts and every KPI to the cent)."""
    from pytest import approx

    from gold.transforms import KPIS, OPEN_SUFFIX
    from tests.checks import HALF_CENT, gold_rows
    from tests.oracle import RunningOracle

    def table(layer, name):
        return spark.read.format("delta").load(s.table_path(layer, name))

    late = {(r.topic, r.partition, r.offset) for r in table("silver", "late_records")
            .select("topic", "partition", "offset").collect()}
    t = time.monotonic()
    oracle = RunningOracle(s, late).feed_file(ledger)
    log(f"oracle: one pass over the ledger in {time.monotonic() - t:.0f} s")
    problems = []
    for src in s.sources:
        b = table("bronze", src.bronze_table)
        n, distinct = b.count(), b.select("partition", "offset").distinct().count()
        if not n == distinct == oracle.records[src.topic]:
            problems.append(f"bronze {src.topic}: {n} rows, {distinct} distinct offsets, ledger {oracle.records[src.topic]}")
        got = table("silver", src.kind).count()
        if got != oracle.valid[src.kind]:
            problems.append(f"silver.{src.kind}: {got} rows, oracle {oracle.valid[src.kind]}")
    if table("silver", "order_items").count() != oracle.items:
        problems.append(f"silver.order_items: oracle {oracle.items}")
    if table("silver", "quarantine").count() != sum(oracle.malformed.values()):
        problems.append(f"silver.quarantine: oracle {sum(oracle.malformed.values())}")
    if oracle.late_not_late:
        problems.append(f"{len(oracle.late_not_late)} records in the late ledger were not sent late")
    for kpi in KPIS:
        # every window, closed (gold/<kpi>) or still open (gold/<kpi>_open), read as any Delta reader does
        final, open_ = gold_rows(s, kpi.name, kpi), gold_rows(s, kpi.name + OPEN_SUFFIX, kpi)
        got, want = {**final, **open_}, oracle.gold(kpi.name)
        if set(final) & set(open_):
            problems.append(f"gold.{kpi.name}: {len(set(final) & set(open_))} windows both closed and open")
        wrong = [k for k, v in want.items() if k not in got or got[k] != approx(v, abs=HALF_CENT)]
        extra = set(got) - set(want)
        if wrong or extra:
            problems.append(f"gold.{kpi.name}: {len(wrong)} rows differ or missing, {len(extra)} extra "
                            f"(of {len(want)})")
    return {"ok": not problems, "problems": problems, "orders": oracle.valid["orders"],
            "records": sum(oracle.records.values()), "late": len(late), "duplicates": dict(oracle.duplicates),
            "quarantined": dict(oracle.malformed)}


def plot(result: dict, path: Path) -> None:
    """One PNG: a small line chart per series (Pillow; no plotting library needed)."""
    from PIL import Image, ImageDraw

    samples, lat = result["samples"], result["latency_per_minute"]
    big = sorted(samples[-1]["tables"], key=lambda t: -samples[-1]["tables"][t].get("files", 0))[:6] if samples else []
    charts = [
        ("event -> gold, s (per Kafka minute)", {"p50": [(m["minute"], m["p50"]) for m in lat],
                                                 "p99": [(m["minute"], m["p99"]) for m in lat]}),
        ("records behind Kafka", {"bronze": [(r["t_min"], r["records_behind"]) for r in samples]}),
        ("Spark app RSS, MiB", {"rss": [(r["t_min"], r["rss_mib"]) for r in samples]}),
        ("cores busy (app)", {"cores": [(r["t_min"], r.get("cores_busy")) for r in samples]}),
        ("files per table", {t: [(r["t_min"], r["tables"].get(t, {}).get("files")) for r in samples] for t in big}),
        ("Delta log versions", {t: [(r["t_min"], r["tables"].get(t, {}).get("version")) for r in samples] for t in big}),
        ("_delta_log MiB", {t: [(r["t_min"], (r["tables"].get(t, {}).get("log_bytes") or 0) / 2**20) for r in samples]
                            for t in big}),
        ("state store rows", {q: [(r["t_min"], r.get("queries", {}).get(q, {}).get("state_rows")) for r in samples]
                              for q in (samples[-1].get("queries", {}) if samples else {})}),
        ("batch durationMs p50", {q: [(r["t_min"], r.get("queries", {}).get(q, {}).get("duration_p50_ms"))
                                      for r in samples] for q in (samples[-1].get("queries", {}) if samples else {})}),
        ("state/ folder MiB (disk)", {q: [(r["t_min"], r["checkpoints"][q]["state_bytes"] / 2**20) for r in samples]
                                      for q in (samples[-1]["checkpoints"] if samples else {})}),
        ("checkpoint folder MiB", {q: [(r["t_min"], r["checkpoints"][q]["bytes"] / 2**20) for r in samples]
                                   for q in (samples[-1]["checkpoints"] if samples else {})}),
    ]
    cw, ch, cols = 520, 300, 3
    img = Image.new("RGB", (cw * cols, ch * -(-len(charts) // cols)), "white")
    d = ImageDraw.Draw(img)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    for i, (title, series) in enumerate(charts):
        ox, oy = (i % cols) * cw, (i // cols) * ch
        left, top, right, bottom = ox + 60, oy + 28, ox + cw - 15, oy + ch - 60
        d.text((ox + 10, oy + 8), title, fill="black")
        pts = [(x, y) for s in series.values() for x, y in s if y is not None]
        d.rectangle([left, top, right, bottom], outline="#888")
        if not pts:
            continue
        x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts) or 1
        y1 = max(p[1] for p in pts) * 1.05 or 1
        x1 = x1 if x1 > x0 else x0 + 1

        def xy(x, y):
            return left + (x - x0) / (x1 - x0) * (right - left), bottom - y / y1 * (bottom - top)

        d.text((ox + 4, top - 4), f"{y1:.3g}", fill="#444")
        d.text((ox + 4, bottom - 8), "0", fill="#444")
        d.text((left, bottom + 4), f"{x0:g}", fill="#444")
        d.text((right - 30, bottom + 4), f"{x1:g} min", fill="#444")
        for j, (name, s) in enumerate(series.items()):
            line = [xy(x, y) for x, y in s if y is not None]
            color = colors[j % len(colors)]
            if len(line) > 1:
                d.line(line, fill=color, width=2)
            d.text((left + (j % 3) * 150, bottom + 18 + (j // 3) * 12), name, fill=color)
    img.save(path)


def markdown(result: dict) -> str:
    b = result["bounds"]
    ok = lambda x: "pass" if x["ok"] else "FAIL"  # noqa: E731
    rows = [
        ("event -> gold p99", f"first {b['latency']['first_p99_s']} s, last {b['latency']['last_p99_s']} s",
         b["latency"]["rule"], ok(b["latency"])),
        ("Spark app RSS", f"after warm-up {b['rss']['after_warmup']} MiB, last {b['rss']['last']} MiB",
         b["rss"]["rule"], ok(b["rss"])),
        ("state store rows (all queries)", f"after warm-up {b['state']['after_warmup']}, last {b['state']['last']}",
         b["state"]["rule"], ok(b["state"])),
        ("state/ folders on disk", f"after warm-up {b['state_on_disk']['after_warmup']} B, "
         f"last {b['state_on_disk']['last']} B", b["state_on_disk"]["rule"], "-"),
        ("files per table", f"max {b['files']['max_files_per_table']}", b["files"]["rule"], ok(b["files"])),
        ("gold = oracle", "; ".join(result.get("oracle", {}).get("problems", [])) or
         f"{result.get('oracle', {}).get('orders')} orders, every KPI", "equal to the cent", ok(b["oracle"])),
    ]
    return (f"### Soak {result['date']} - `{result['command']}`\n\n{result['minutes']:g} minutes at "
            f"{result['rate']:g} orders/s (+ as many logs and metrics), faults {FAULTS}\n\n"
            "| measure | result | bound | |\n| --- | --- | --- | --- |\n"
            + "".join(f"| {a} | {r} | {c} | {d} |\n" for a, r, c, d in rows))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=None, help="orders/s (default: half the benchmark's P1)")
    p.add_argument("--sample-seconds", type=float, default=60.0)
    args = p.parse_args(argv)
    rate = args.rate or default_rate()
    base, date, logdir = bench_start()
    s = fresh(base, f"soak-{uuid.uuid4().hex[:6]}")
    out = results_file(date, "-soak")
    result: dict = {"date": date.isoformat(timespec="seconds"), "minutes": args.minutes, "rate": rate,
                    "command": "python -m bench.soak " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "lake_root": s.lake_root, "compact_every": s.compact_every,
                    "warmup_minutes": warmup_minutes(s, args.minutes), "samples": []}

    def save() -> None:
        out.write_text(json.dumps(result, indent=1, default=str) + "\n")

    from silver import customers
    from common.spark import get_spark

    spark = get_spark(base, app_name="lakehouse-soak")  # idle until the final check
    customers.load(spark, s)
    ledger = logdir / "ledger.jsonl"
    app = App(s, "project", logdir, "soak")
    app.start()
    producer = multiprocessing.get_context("spawn").Process(target=produce, daemon=True, args=(s, GenOptions(
        topics=s.source_topics, count=int(rate * args.minutes * 60), rate=rate, seed=2026, first_order_id=1,
        ledger=ledger, progress=False, **FAULTS)))
    t0 = time.time()
    producer.start()
    log(f"soak: {args.minutes:g} min at {rate:g} orders/s (+ logs, metrics) on {s.lake_root}; ledger {ledger}")
    lake = Lake(s)
    cpu = [0.0, t0]
    try:
        while producer.is_alive() or not result["samples"]:
            producer.join(args.sample_seconds)
            if not app.alive():
                raise RuntimeError(f"the app stopped during the soak; see {app.logdir}")
            row = sample(lake, app, t0, cpu)
            result["samples"].append(row)
            batches = ", ".join(f"{q} {v['batches']}x p50 {v['duration_p50_ms']} ms" for q, v in row["queries"].items())
            log(f"  {row['t_min']:.1f} min: {row['orders_in_gold']} orders in gold, {row['records_behind']} records "
                f"behind, RSS {row['rss_mib']} MiB, {row.get('cores_busy')} cores; {batches}")
            save()
        if producer.exitcode:
            raise RuntimeError(f"the producer failed (exit {producer.exitcode})")
        deadline, last = time.time() + 600, None
        while time.time() < deadline:  # the live app takes the last orders to gold
            time.sleep(10)  # polling the lake while the app drains, not timing a stream
            lake.follow_orders()
            now = (lake.behind(), lake.silver_rows, len(lake.gold))
            if now[0] == 0 and now[1] == now[2] and now == last:  # bronze, silver and gold all still
                break
            last = now
        result["drained_s"] = round(time.time() - t0 - args.minutes * 60, 1)
        result["samples"].append(sample(lake, app, t0, cpu))
    finally:
        if app.alive():
            app.kill(signal.SIGTERM)
        result["spark_app_peak_rss_mib"] = app.peak_mib
    # whatever a stage had not taken yet (gold_kpis runs every 30 s): a plain one-shot run, as
    # after any stop, so the check compares a finished lake with the ledger
    finish = subprocess.run([sys.executable, "-m", "app.cli", "run", "all", "--trigger", "availableNow"],
                            env=app_env(s), cwd=ROOT, capture_output=True, text=True)
    (logdir / "soak-final-run.log").write_text(finish.stdout + finish.stderr)
    if finish.returncode != 0:
        raise RuntimeError(f"the final availableNow run failed: {finish.stderr.strip().splitlines()[-1:]}")
    lake.follow_orders()
    result["latency_per_minute"] = per_minute(lake.latencies(), t0)
    result["latency_all"] = percentiles([x for _, x in lake.latencies()])
    save()
    result["oracle"] = check_against_ledger(spark, s, ledger)
    result["bounds"] = judge(result, args.minutes, s.compact_every, result["warmup_minutes"])
    result["ok"] = all(b["ok"] for b in result["bounds"].values())
    save()
    png = out.with_suffix(".png")
    plot(result, png)
    md = markdown(result) + f"\n![soak series]({png.name})\n"
    out.with_suffix(".md").write_text(md)
    print(md)
    log(f"wrote {out.relative_to(ROOT)}, {png.relative_to(ROOT)} and {out.with_suffix('.md').relative_to(ROOT)}; "
        f"app log in {logdir.relative_to(ROOT)}: {'PASS' if result['ok'] else 'FAIL'}")
    spark.stop()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
