"""``lakehouse status``: every query of the pipeline, from its event log (``ops.pipeline_events``,
read without Spark) and its checkpoint lease: whether it runs now, its last logged batch, rates,
records behind its source, its watermark (silver: per source), and the late records, dropped
duplicates and records with fields the schema does not know (schema drift, with their names) of its
current run. The log is appended every LAKEHOUSE_EVENT_LOG_INTERVAL, so the
last batch shown is at most that old while a query runs."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from common.checkpoints import OWNER_FILE, lease_is_live
from serving.native import NativeLake
from common.settings import OPS, Settings, s3_location
from common.text import align


def _owner(settings: Settings, checkpoint: str) -> dict | None:
    """The lease record on ``checkpoint``, read without Spark (None: no lease)."""
    path = f"{checkpoint}/{OWNER_FILE}"
    try:
        if path.startswith("s3a://"):
            from common.clients import minio_client

            bucket, key = s3_location(path)
            response = minio_client(settings, bucket=bucket).get_object(bucket, key)
            try:
                return json.loads(response.read())
            finally:
                response.close()
                response.release_conn()
        return json.loads(Path(path).read_text())
    except Exception:  # noqa: BLE001 - no lease file: nobody holds it
        return None


def read_status(settings: Settings, flows) -> list[dict]:
    """One entry per query of ``flows`` (the graph's) that ran at least once: its last logged batch
    and the totals of its current run, with ``active`` from its lease."""
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
    checkpoints = {f.name: f.checkpoint for f in flows}
    out = []
    for row in sorted(latest, key=lambda r: r["query"]):
        run = totals.get((row["query"], row["run_id"]), {})
        owner = _owner(settings, checkpoints[row["query"]]) if row["query"] in checkpoints else None
        out.append({**row, "active": bool(owner and lease_is_live(owner)),
                    **{f"run_{k}": run.get(k) for k in ("late", "duplicates", "quarantined", "rescued", "input_rows")},
                    "run_drift": merge_drift(drifts.get((row["query"], row["run_id"]), []))})
    return out


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
