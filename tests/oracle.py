"""An independent, plain-Python recomputation of what silver (and gold) must contain,
from the generator's ledger alone."""

from __future__ import annotations

import json

MALFORMED_REASON = {
    "orders": {"truncated_json": "malformed_json", "not_json": "malformed_json", "wrong_type": "wrong_type:total",
               "missing_field": "missing_field:order_id", "negative_quantity": "quantity_not_positive"},
    "logs": {"truncated_json": "malformed_json", "not_json": "malformed_json",
             "wrong_type": "wrong_type:duration_ms", "missing_field": "missing_field:level"},
    "metrics": {"truncated_json": "malformed_json", "not_json": "malformed_json",
                "wrong_type": "wrong_type:cpu_percent", "missing_field": "missing_field:host"},
}


def coords(rec: dict) -> tuple:
    return rec["topic"], rec["partition"], rec["offset"]


class SilverOracle:
    def __init__(self, ledger: list[dict], settings):
        self.kind_of = {settings.topic_orders: "orders", settings.topic_logs: "logs",
                        settings.topic_metrics: "metrics"}
        self.ledger = [r for r in ledger if r["topic"] in self.kind_of]

    def records(self, kind: str) -> list[dict]:
        return [r for r in self.ledger if self.kind_of[r["topic"]] == kind]

    def valid_orders(self) -> dict[int, dict]:
        """order_id -> payload of every valid, on-time order (a duplicate counts once)."""
        out = {}
        for r in self.records("orders"):
            if r["fault"] in (None, "duplicate"):
                o = json.loads(r["value"])
                out.setdefault(o["order_id"], o)
        return out

    def items(self) -> set[tuple]:
        return {(o["order_id"], line, it["product_id"], it["quantity"], round(it["subtotal"], 2))
                for o in self.valid_orders().values() for line, it in enumerate(o["items"], 1)}

    def quarantine(self) -> dict[tuple, str]:
        """coordinates -> expected reason, for every malformed record."""
        out = {}
        for r in self.ledger:
            if (r["fault"] or "").startswith("malformed:"):
                out[coords(r)] = MALFORMED_REASON[self.kind_of[r["topic"]]][r["fault"].split(":", 1)[1]]
        return out

    def late(self) -> set[tuple]:
        return {coords(r) for r in self.ledger if r["fault"] == "late"}

    def duplicates(self, kind: str) -> int:
        return sum(1 for r in self.records(kind) if r["fault"] == "duplicate")

    def valid_count(self, kind: str) -> int:
        if kind == "orders":
            return len(self.valid_orders())
        return sum(1 for r in self.records(kind) if r["fault"] is None)


def _floor(ts, seconds: int):
    from datetime import datetime, timezone

    epoch = int(ts.replace(tzinfo=timezone.utc).timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=timezone.utc).replace(tzinfo=None)


def windows(ts, size: int, slide: int | None = None):
    """The [start, end) windows Spark's window() puts event time ``ts`` in."""
    from datetime import timedelta

    slide = slide or size
    last = _floor(ts, slide)
    out = []
    start = last
    while start + timedelta(seconds=size) > ts:
        out.append((start, start + timedelta(seconds=size)))
        start -= timedelta(seconds=slide)
    return out


def _fmt(ts) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S")


class GoldOracle:
    """Every gold KPI recomputed in plain Python from the ledger's valid, on-time, deduplicated events.

    Sums and averages are left unrounded: gold rounds them to the cent, so a gold value is right
    when it is within half a cent of the exact one (at an exact half cent, float summation order
    decides which way it rounds)."""

    def __init__(self, silver: SilverOracle, settings):
        from common.settings import interval_seconds

        self.s = silver
        self.kpi = int(interval_seconds(settings.kpi_window))
        self.slide = int(interval_seconds(settings.kpi_slide))
        self.minute = int(interval_seconds(settings.minute_window))
        self.host = int(interval_seconds(settings.host_window))

    @staticmethod
    def _ts(payload):
        from datetime import datetime

        return datetime.fromisoformat(payload["timestamp"])

    def _group(self, events, size, slide, key, measures):
        acc: dict = {}
        for e in events:
            for w in windows(self._ts(e), size, slide):
                acc.setdefault((_fmt(w[0]), _fmt(w[1])) + key(e), []).append(e)
        return {k: measures(v) for k, v in acc.items()}

    def customer_order_kpis(self):
        return self._group(self.s.valid_orders().values(), self.kpi, self.slide, lambda o: (o["customer_id"],),
                           lambda v: (len(v), sum(o["total"] for o in v), max(o["total"] for o in v)))

    def customer_minute_totals(self):
        return self._group(self.s.valid_orders().values(), self.minute, None, lambda o: (o["customer_id"],),
                           lambda v: (len(v), sum(o["total"] for o in v)))

    def product_sales(self):
        lines = [{**it, "timestamp": o["timestamp"]} for o in self.s.valid_orders().values() for it in o["items"]]
        return self._group(lines, self.minute, None, lambda i: (i["product_id"], i["product_name"]),
                           lambda v: (len(v), sum(i["quantity"] for i in v), sum(i["subtotal"] for i in v)))

    def _valid(self, kind):
        return [json.loads(r["value"]) for r in self.s.records(kind) if r["fault"] is None]

    def log_level_counts(self):
        return self._group(self._valid("logs"), self.minute, None, lambda e: (e["level"],), lambda v: (len(v),))

    def module_stats(self):
        return self._group(self._valid("logs"), self.minute, None, lambda e: (e["module"],),
                           lambda v: (len(v), sum(e["duration_ms"] for e in v) / len(v)))

    def host_metrics(self):
        return self._group(self._valid("metrics"), self.host, None, lambda e: (e["host"],),
                           lambda v: (sum(e["metrics"]["cpu_percent"] for e in v) / len(v),
                                      max(e["metrics"]["memory_percent"] for e in v), len(v)))
