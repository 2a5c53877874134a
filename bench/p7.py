"""P7: steady state at production volume (issue 35), with the peer in the same run.

    python -m bench.p7                                  # 800 orders/s, 30 minutes measured
    python -m bench.p7 --minutes 5 --warmup-minutes 2   # a shorter try
    python -m bench.p7 --systems project,project-nocompact,peer   # compaction's share of the p99

Each system in turn (``bench.p2.run_one``: its own process, fresh topics and lake prefix) gets
``--rate`` orders/s (+ as many logs and metrics records) for a warm-up of twice the longest
watermark delay (10 minutes with the defaults: only then does silver's dedup state hold a full set
of keys), until gold has the warm-up's orders; then ``--minutes`` at the same rate, measured.
Reported per system: event -> gold p50/p99 of the measured orders, the drain after the producer,
cores busy, peak RSS; for the project, from its event log (``ops.pipeline_events``, read with
delta-rs) over the batches that started in the measured phase, per query: batches, input rows p50,
``durationMs`` p50/p99 and the p50 of each of its phases (where a batch's time goes), the state
store's rows (max); and the compactions (OPTIMIZE commits) and the most files of any table.
``project-nocompact`` is the project with ``LAKEHOUSE_COMPACT_EVERY=0``: the issue's bound is the
project's p99 within 1.5x of that. Writes ``bench/results/<date>-p7.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.measure import epoch_s, percentiles
from bench.p2 import run_one
from bench.run import ROOT, bench_start, log, results_file
from common.settings import OPS, Settings, interval_seconds

SYSTEMS = ("peer", "project", "project-nocompact")
TARGETS = {"gold_p99_s": 30.0, "silver_batch_p50_s": 10.0, "compaction_p99_ratio": 1.5}


def warmup_minutes(s: Settings) -> float:
    """Twice the longest watermark delay: a dedup key lives 2 x its source's delay."""
    return 2 * max(interval_seconds(s.watermark_orders), interval_seconds(s.watermark_logs),
                   interval_seconds(s.watermark_metrics)) / 60


def steady_state(s: Settings, measured_from: float, measured_to: float) -> dict:
    """The project's own figures over the batches that started in the measured phase (from the
    measured load's first order until gold had its last)."""
    from deltalake import DeltaTable

    from bench.soak import Lake, tables_of
    from common.deltars import storage_options, uri
    from common.eventlog import VIEW
    from serving.native import NativeLake

    rows = NativeLake(s).rows(f"{OPS}.{VIEW}", order_by="batch_id",
                              columns="query, batch_id, started_at, duration_ms, durations, input_rows, state_rows")
    rows = [r for r in rows if r["started_at"] is not None and measured_from <= epoch_s(r["started_at"]) < measured_to]
    queries: dict[str, dict] = {}
    for q in sorted({r["query"] for r in rows}):
        mine = [r for r in rows if r["query"] == q]
        phases: dict[str, list[float]] = {}
        for r in mine:
            for k, v in json.loads(r["durations"] or "{}").items():
                phases.setdefault(k, []).append(float(v))
        states = [r["state_rows"] for r in mine if r["state_rows"] is not None]
        queries[q] = {"batches": len(mine),
                      "input_rows_p50": percentiles([float(r["input_rows"] or 0) for r in mine], (50,))["p50"],
                      "duration_ms": percentiles([float(r["duration_ms"]) for r in mine], (50, 99)),
                      "phases_p50_ms": {k: percentiles(v, (50,))["p50"] for k, v in sorted(phases.items())},
                      "state_rows_max": max(states, default=None)}
    lake, compactions, files = Lake(s), 0, {}
    for name in tables_of(s):
        path = s.table_path(*name.split(".", 1))
        try:
            history = DeltaTable(uri(path), storage_options=storage_options(s, path)).history()
        except Exception:  # noqa: BLE001 - a table never written
            continue
        compactions += sum(1 for h in history if h.get("operation") == "OPTIMIZE"
                           and measured_from <= h.get("timestamp", 0) / 1000 < measured_to)
        files[name] = lake.table(name).get("files", 0)
    return {"steady": {"measured_from": measured_from, "measured_to": measured_to, "queries": queries, "compactions": compactions,
            "max_files": max(files.values(), default=0), "max_files_table": max(files, key=files.get, default=None)}}


def main(argv=None) -> int:
    from common.spark import get_spark

    p = argparse.ArgumentParser(prog="bench.p7", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=800.0, help="orders/s (+ as many logs and metrics records)")
    p.add_argument("--minutes", type=float, default=30.0, help="minutes measured, after the warm-up")
    p.add_argument("--warmup-minutes", type=float, default=None,
                   help="load before the measured phase (default: twice the longest watermark delay)")
    p.add_argument("--systems", type=lambda v: v.split(","), default=["project", "peer"],
                   help=f"any of {', '.join(SYSTEMS)} (default project,peer)")
    args = p.parse_args(argv)
    unknown = [x for x in args.systems if x not in SYSTEMS]
    if unknown:
        p.error(f"--systems: unknown {', '.join(unknown)} (valid: {', '.join(SYSTEMS)})")
    base, date, logdir = bench_start()
    warm = args.warmup_minutes if args.warmup_minutes is not None else warmup_minutes(base)
    spark = get_spark(base, app_name="bench-p7")  # idle while the systems run, but for gold's counts
    out = results_file(date, "-p7")
    result = {"date": date.isoformat(timespec="seconds"), "rate": args.rate, "minutes": args.minutes,
              "warmup_minutes": warm, "targets": TARGETS,
              "command": "python -m bench.p7 " + " ".join(argv if argv is not None else sys.argv[1:]), "results": []}
    for system in args.systems:
        project = system.startswith("project")
        settings = base.with_overrides(compact_every=0) if system == "project-nocompact" else base
        log(f"P7 {system}: {warm:g} min of warm-up, then {args.minutes:g} min measured at {args.rate:g} orders/s")
        res = run_one(spark, settings, "project" if project else system, args.rate, args.minutes * 60, warm * 60,
                      logdir, tag="p7-nocompact" if system == "project-nocompact" else "p7",
                      after=steady_state if project else None)
        result["results"].append({**res, "system": system})
        out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print("| system | gold p50 s | gold p99 s | silver batch p50 / p99 s | gold_kpis batch p50 s | state rows (max) "
          "| compactions | drain s | cores (app) | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in result["results"]:
        # the project's per-query figures of the measured phase (steady_state); run_one's own "queries" are the log's, all batches
        q = r.get("steady", {}).get("queries", {})
        silver, kpis = q.get("silver", {}), q.get("gold_kpis", {})
        state = sum(v.get("state_rows_max") or 0 for v in q.values()) if q else None

        def secs(x):
            return round(x / 1000, 1) if x is not None else None

        print(f"| {r['system']} | {r['gold']['p50']} | {r['gold']['p99']} | "
              f"{secs(silver.get('duration_ms', {}).get('p50'))} / {secs(silver.get('duration_ms', {}).get('p99'))} | "
              f"{secs(kpis.get('duration_ms', {}).get('p50'))} | {state} | {r.get('steady', {}).get('compactions', '-')} | "
              f"{r['drain_s']} | {r['cpu_s_per_wall_s']} | {r['peak_rss_mib']} |")
    log(f"wrote {out.relative_to(ROOT)}")
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
