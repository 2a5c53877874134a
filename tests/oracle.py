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


NATURAL_KEYS = {"orders": ("order_id",), "logs": ("request_id", "timestamp", "level", "module"),
                "metrics": ("host", "timestamp")}  # silver's dedup keys (silver.transforms.KINDS), payload names


def natural_key(kind: str, payload: dict) -> tuple:
    return tuple(payload.get(k) for k in NATURAL_KEYS[kind])


def coords(rec: dict) -> tuple:
    return rec["topic"], rec["partition"], rec["offset"]


class SilverOracle:
    """What silver must hold, given which records it found behind its watermark (``late``: their
    coordinates). Which records are late depends on micro-batch boundaries, as in Spark, so the
    late set is an input: ``tests.checks.check_late`` checks it on its own (only the generator's
    late records, each at or behind a watermark the stream had reached); everything else follows."""

    def __init__(self, ledger: list[dict], settings, late=()):
        self.kind_of = {settings.topic_orders: "orders", settings.topic_logs: "logs",
                        settings.topic_metrics: "metrics"}
        self.ledger = [r for r in ledger if r["topic"] in self.kind_of]
        self.late_coords = set(late)
        self._kept: dict[str, list[dict]] = {}

    def on_time(self, rec: dict) -> bool:
        """A valid record (a duplicate's copy included) that silver did not find late."""
        return rec["fault"] in (None, "duplicate") or (rec["fault"] == "late" and coords(rec) not in self.late_coords)

    def records(self, kind: str) -> list[dict]:
        return [r for r in self.ledger if self.kind_of[r["topic"]] == kind]

    def on_time_records(self, kind: str) -> list[dict]:
        """Valid records silver keeps one of per natural key (the first sent), in send order."""
        if kind in self._kept:
            return self._kept[kind]
        seen, out = set(), self._kept.setdefault(kind, [])
        for r in self.records(kind):
            if self.on_time(r):
                key = natural_key(kind, json.loads(r["value"]))
                if key not in seen:
                    seen.add(key)
                    out.append(r)
        return out

    def valid_orders(self) -> dict[int, dict]:
        """order_id -> payload of every valid, on-time order (a duplicate counts once)."""
        return {o["order_id"]: o for o in (json.loads(r["value"]) for r in self.on_time_records("orders"))}

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
        return set(self.late_coords)

    def duplicates(self, kind: str) -> int:
        """Valid records the dedup operator dropped as copies of one it kept (same natural key; a
        copy sent behind the watermark is late instead)."""
        return sum(1 for r in self.records(kind) if self.on_time(r)) - len(self.on_time_records(kind))

    def valid_count(self, kind: str) -> int:
        return len(self.on_time_records(kind))


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
        return [json.loads(r["value"]) for r in self.s.on_time_records(kind)]

    def log_level_counts(self):
        return self._group(self._valid("logs"), self.minute, None, lambda e: (e["level"],), lambda v: (len(v),))

    def module_stats(self):
        return self._group(self._valid("logs"), self.minute, None, lambda e: (e["module"],),
                           lambda v: (len(v), sum(e["duration_ms"] for e in v) / len(v)))

    def host_metrics(self):
        return self._group(self._valid("metrics"), self.host, None, lambda e: (e["host"],),
                           lambda v: (sum(e["metrics"]["cpu_percent"] for e in v) / len(v),
                                      max(e["metrics"]["memory_percent"] for e in v), len(v)))


class RunningOracle:
    """``SilverOracle`` and ``GoldOracle`` in one pass over a ledger, for ledgers too big to hold
    (a soak's millions of records): memory grows with the dedup keys and the KPI groups, not with
    the records. ``feed`` takes the records in send order (the ledger file's order); the KPI
    dictionaries have ``GoldOracle``'s shape (tests/test_oracle.py checks the two agree)."""

    def __init__(self, settings, late=()):
        from collections import Counter

        from common.settings import interval_seconds

        self.kind_of = {src.topic: src.kind for src in settings.sources}
        self.late_coords = set(late)
        self.kpi = int(interval_seconds(settings.kpi_window))
        self.slide = int(interval_seconds(settings.kpi_slide))
        self.minute = int(interval_seconds(settings.minute_window))
        self.host = int(interval_seconds(settings.host_window))
        self.records, self.valid, self.duplicates, self.malformed = Counter(), Counter(), Counter(), Counter()
        self.items = 0
        self.late_not_late: list[tuple] = []  # coordinates in the late ledger the generator did not send late
        self._seen: dict[str, set] = {kind: set() for kind in NATURAL_KEYS}
        self._acc: dict[str, dict] = {name: {} for name in ("customer_order_kpis", "customer_minute_totals",
                                                             "product_sales", "log_level_counts", "module_stats",
                                                             "host_metrics")}

    def _add(self, name: str, ts, size: int, slide: int | None, key: tuple, values: tuple, folds: str) -> None:
        acc = self._acc[name]
        for w in windows(ts, size, slide):
            k = (_fmt(w[0]), _fmt(w[1])) + key
            old = acc.get(k)
            acc[k] = values if old is None else tuple(
                max(a, b) if f == "m" else a + b for f, a, b in zip(folds, old, values))

    def feed(self, rec: dict) -> None:
        from datetime import datetime

        kind = self.kind_of.get(rec["topic"])
        if kind is None:
            return
        self.records[rec["topic"]] += 1
        fault = rec["fault"] or ""
        if coords(rec) in self.late_coords:
            if fault not in ("late", "duplicate"):
                self.late_not_late.append(coords(rec))
            if fault == "late":
                return
        if fault.startswith("malformed:"):
            self.malformed[kind] += 1
            return
        if fault not in ("", "duplicate", "late"):
            return
        e = json.loads(rec["value"])
        key = natural_key(kind, e)
        if key in self._seen[kind]:
            self.duplicates[kind] += 1
            return
        self._seen[kind].add(key)
        self.valid[kind] += 1
        ts = datetime.fromisoformat(e["timestamp"])
        if kind == "orders":
            total = e["total"]
            self._add("customer_order_kpis", ts, self.kpi, self.slide, (e["customer_id"],), (1, total, total), "ssm")
            self._add("customer_minute_totals", ts, self.minute, None, (e["customer_id"],), (1, total), "ss")
            for it in e["items"]:
                self.items += 1
                self._add("product_sales", ts, self.minute, None, (it["product_id"], it["product_name"]),
                          (1, it["quantity"], it["subtotal"]), "sss")
        elif kind == "logs":
            self._add("log_level_counts", ts, self.minute, None, (e["level"],), (1,), "s")
            self._add("module_stats", ts, self.minute, None, (e["module"],), (1, e["duration_ms"]), "ss")
        else:
            m = e["metrics"]
            self._add("host_metrics", ts, self.host, None, (e["host"],), (m["cpu_percent"], m["memory_percent"], 1),
                      "sms")

    def feed_file(self, path) -> "RunningOracle":
        with open(path) as f:
            for line in f:
                if line.strip():
                    self.feed(json.loads(line))
        return self

    def gold(self, name: str) -> dict:
        """One KPI as ``GoldOracle`` gives it."""
        acc = self._acc[name]
        if name == "module_stats":
            return {k: (n, total / n) for k, (n, total) in acc.items()}
        if name == "host_metrics":
            return {k: (cpu / n, mem, n) for k, (cpu, mem, n) in acc.items()}
        return dict(acc)
