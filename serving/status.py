"""``lakehouse status``: every query of the pipeline, from its event log (``ops.pipeline_events``,
read without Spark) and its stage's ownership record (``common.ownership``): whether it runs now, its last logged batch, rates,
records behind its source, its watermark (silver: per source), and the late records, dropped
duplicates and records with fields the schema does not know (schema drift, with their names) of its
current run. The log is appended every LAKEHOUSE_EVENT_LOG_INTERVAL, so the
last batch shown is at most that old while a query runs."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from common.ownership import describe, is_live, read_owner, read_standby
from serving.native import NativeLake
from common.settings import OPS, Settings
from common.text import align


def read_status(settings: Settings, flows) -> list[dict]:
    """One entry per query of ``flows`` (the graph's) that ran at least once: its last logged batch
    and the totals of its current run, with ``active`` from its stage's ownership record."""
    lake = NativeLake(settings)
    relation = lake.relation(f"{OPS}.pipeline_events")
    if relation is None:
        return []
    latest = lake.sql(f"SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY query ORDER BY ended_at DESC, "
                      f"batch_id DESC) AS rn FROM {relation}) WHERE rn = 1")
    totals = {(r["query"], r["run_id"]): r for r in lake.sql(
        f"SELECT query, run_id, sum(late) AS late, sum(duplicates) AS duplicates, sum(quarantined) AS quarantined, "
        f"sum(rescued) AS rescued, sum(input_rows) AS input_rows FROM {relation} GROUP BY query, run_id")}
    drifts: dict[tuple, list[str]] = {}
    for r in lake.sql(f"SELECT query, run_id, schema_drift FROM {relation} WHERE schema_drift IS NOT NULL "
                      f"ORDER BY ended_at"):
        drifts.setdefault((r["query"], r["run_id"]), []).append(r["schema_drift"])
    stage_of = {f.name: f.stage for f in flows}
    owners = {stage: read_owner(settings, stage) for stage in dict.fromkeys(stage_of.values())}
    out = []
    for row in sorted(latest, key=lambda r: r["query"]):
        run = totals.get((row["query"], row["run_id"]), {})
        owner = owners.get(stage_of.get(row["query"]))
        out.append({**row, "active": is_live(owner),
                    **{f"run_{k}": run.get(k) for k in ("late", "duplicates", "quarantined", "rescued", "input_rows")},
                    "run_drift": merge_drift(drifts.get((row["query"], row["run_id"]), []))})
    return out


def format_owners(settings: Settings, stages) -> list[str]:
    """One line per stage: which process runs it (its ownership record), which one stands by
    (``app.standby``), and the last takeover."""
    lines = []
    for stage in stages:
        owner = read_owner(settings, stage)
        active = (f"active {describe(owner)}, epoch {owner.get('epoch')}, since "
                  f"{datetime.fromtimestamp(owner.get('since') or owner['heartbeat'], timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
                  if is_live(owner) else "not running")
        standby = read_standby(settings, stage)
        line = f"{stage}: {active}"
        if standby:
            line += f"; standby pid {standby.get('pid')} on {standby.get('host')} (warm in {standby.get('warm_s')} s)"
        took = (owner or {}).get("took_over")
        if took:
            line += (f"; took over from pid {took.get('pid')} on {took.get('host')} at "
                     f"{datetime.fromtimestamp(took['at'], timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
        lines.append(line)
    return lines


def merge_drift(logged: list[str]) -> dict[str, dict]:
    """The ``schema_drift`` entries of a run's batches (JSON, per source) added up: per source, the
    records with unknown fields, and every field named (unknown, gone, made a column)."""
    out: dict[str, dict] = {}
    for text in logged:
        for source, d in json.loads(text).items():
            m = out.setdefault(source, {"rescued": 0, "unknown_fields": set(), "gone_fields": set(), "new_columns": set()})
            m["rescued"] += int(d.get("rescued") or 0)
            for k in ("unknown_fields", "gone_fields", "new_columns"):
                m[k].update(d.get(k) or ())
    return {s: {k: (sorted(v) if isinstance(v, set) else v) for k, v in m.items()} for s, m in sorted(out.items())}


def format_drift(rows: list[dict]) -> list[str]:
    """One line per source whose records drifted from their schema in the current run of silver."""
    lines = []
    for r in rows:
        for source, d in (r.get("run_drift") or {}).items():
            parts = []
            if d["unknown_fields"]:
                parts.append(f"{d['rescued']} records with fields the schema does not know: "
                             + ", ".join(d["unknown_fields"]))
            if d["new_columns"]:
                parts.append("made columns: " + ", ".join(d["new_columns"]))
            if d["gone_fields"]:
                parts.append("fields no record had: " + ", ".join(d["gone_fields"]))
            lines.append(f"schema drift in {r['query']} ({source}, this run): " + "; ".join(parts))
    return lines


def _behind(row: dict) -> str:
    parts = ([f"{row['records_behind']} records"] if row.get("records_behind") is not None else []) + \
            ([f"{row['files_behind']} files"] if row.get("files_behind") is not None else [])
    return ", ".join(parts) or "-"


def format_status(rows: list[dict], now: datetime | None = None) -> list[str]:
    now = now or datetime.now(timezone.utc)
    table = [["QUERY", "STAGE", "ACTIVE", "BATCH", "IN ROWS/S", "DONE ROWS/S", "BEHIND SOURCE", "WATERMARK",
              "LATE", "DUPLICATES", "RESCUED", "LAST BATCH"]]
    for r in rows:
        wm = r.get("event_watermark") or (f"{r['watermark']:%Y-%m-%dT%H:%M:%SZ}" if r.get("watermark") else "-")
        if wm.startswith("1970-01-01"):
            wm = "-"
        ended = r.get("ended_at")
        table.append([r["query"], r.get("stage") or "-", "yes" if r["active"] else "no", str(r["batch_id"]),
                      f"{r.get('input_rows_per_second') or 0:.0f}", f"{r.get('processed_rows_per_second') or 0:.0f}",
                      _behind(r), wm, str(r.get("run_late") or 0) if r.get("stage") == "silver" else "-",
                      str(r.get("run_duplicates") or 0) if r.get("stage") == "silver" else "-",
                      str(r.get("run_rescued") or 0) if r.get("stage") == "silver" else "-",
                      f"{(now - ended).total_seconds():.0f} s ago" if ended else "-"])
    return align(table, right=(3, 4, 5))
