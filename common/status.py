"""``lakehouse status``: every streaming query's last recorded progress, read from the status
files the progress listener keeps under ``<checkpoints>/_status/`` (no Spark needed): batch,
rates, records behind its source, its event-time watermark (silver: per source), and the records
it found late (all of them are in ``silver.late_records``) and the duplicates it dropped since it
started."""

from __future__ import annotations

import json
import time
from pathlib import Path

from common.settings import Settings
from common.text import align
from common.streams import status_dir


def _documents(settings: Settings) -> list[str]:
    root = status_dir(settings)
    if settings.is_s3:
        from common.clients import minio_client

        client = minio_client(settings)
        prefix = root[len(f"s3a://{settings.bucket}/"):] + "/"
        return [client.get_object(settings.bucket, o.object_name).read().decode()
                for o in client.list_objects(settings.bucket, prefix=prefix) if o.object_name.endswith(".json")]
    return [p.read_text() for p in Path(root).glob("*.json")]


def read_status(settings: Settings) -> list[dict]:
    """Latest entry per query name (a restarted query keeps its id and gets a new runId)."""
    latest: dict[str, dict] = {}
    for doc in _documents(settings):
        for q in json.loads(doc).values():
            name = q.get("name") or q.get("id")
            if name not in latest or q.get("updated_at", 0) > latest[name].get("updated_at", 0):
                latest[name] = q
    return sorted(latest.values(), key=lambda q: q.get("name") or "")


def format_status(rows: list[dict], now: float | None = None) -> list[str]:
    now = now or time.time()
    head = ["QUERY", "ID", "RUN ID", "ACTIVE", "BATCH", "IN ROWS/S", "DONE ROWS/S", "BEHIND SOURCE", "WATERMARK",
            "LATE", "DUPLICATES", "UPDATED"]
    table = [head]
    for q in rows:
        wm = q.get("event_watermark") or q.get("watermark") or "-"
        table.append([q.get("name", "?"), q.get("id", "")[:8], q.get("runId", "")[:8], str(q.get("active", False)).lower(),
                      str(q.get("batch", "-")), f"{q.get('input_rate', 0):.0f}", f"{q.get('processed_rate', 0):.0f}",
                      q.get("lag", "-") if not q.get("error") else f"failed: {q['error'][:60]}",
                      "-" if wm.startswith("1970-01-01") else wm.replace(".000Z", "Z"),
                      str(q["late"]) if "late" in q else "-",
                      str(q["duplicates"]) if q.get("duplicates") else "-", f"{now - q.get('updated_at', now):.0f}s ago"])
    return align(table)
