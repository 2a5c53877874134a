"""An independent, plain-Python recomputation of what silver (and gold) must contain,
from the generator's ledger alone."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

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


VALID_FAULTS = (None, "duplicate", "late")  # ledger faults of the records silver finds valid
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICRO = timedelta(microseconds=1)


def event_micros(text: str) -> int:
    """Epoch microseconds of a payload's ISO ``timestamp``, as silver's Spark session (UTC) reads it:
    a time without an offset is UTC (the generator writes naive UTC times)."""
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return (ts - _EPOCH) // _MICRO


def iso_micros(us: int) -> str:
    """Epoch microseconds as a naive UTC ISO time (to the millisecond), for messages."""
    return (_EPOCH + us * _MICRO).replace(tzinfo=None).isoformat(timespec="milliseconds")


def _batch_key(batch) -> tuple[str, int]:
    """(run, batch id): a run is one silver checkpoint (its writer tag ``silver:<query id>``), whose
    batch ids start at 0 and whose event clock starts empty. A bare batch id is a batch of run ''."""
    return (str(batch[0]), int(batch[1])) if isinstance(batch, tuple) else ("", int(batch))


@dataclass
class LateReplay:
    """What ``replay_lateness`` found. Watermarks are epoch milliseconds, as silver keeps them
    (``silver.watermarks``); event times epoch microseconds, as silver compares them."""

    late: set[tuple] = field(default_factory=set)  # coordinates at or behind their batch's watermark
    watermarks: dict[tuple, dict[str, int | None]] = field(default_factory=dict)  # (run, batch) -> kind -> ms
    batch: dict[tuple, tuple] = field(default_factory=dict)     # coordinates -> (run, batch), valid records
    kinds: dict[tuple, str] = field(default_factory=dict)       # coordinates -> source kind, valid records
    event_us: dict[tuple, int] = field(default_factory=dict)    # coordinates -> event time, valid records
    dropped: set[tuple] = field(default_factory=set)  # valid records in no batch: copies the dedup operator dropped

    def watermark_of(self, c: tuple) -> int | None:
        """The watermark (ms) the batch of record ``c`` was judged by, for its source."""
        return self.watermarks[self.batch[c]][self.kinds[c]]


def replay_lateness(ledger, batch_of: dict, kind_of: dict[str, str], delays_s: dict[str, float]) -> LateReplay:
    """Which valid records silver must have found late, given the micro-batch each was read in.

    ``batch_of`` maps the Kafka coordinates of the records silver wrote (to its source tables or to
    ``silver.late_records``) to their micro-batch: a batch id or a ``(run, batch id)`` pair (a run
    per silver checkpoint; see ``_batch_key``). ``kind_of`` maps a topic to its source kind,
    ``delays_s`` a kind to its watermark delay in seconds (``LAKEHOUSE_WATERMARK_<SOURCE>``).

    Silver's rule (``silver.job._batch_writer``, ``silver.watermarks.EventClock``), replayed per run
    in batch order: batch b is judged, per source, by the greatest event time (truncated to the
    millisecond, ``unix_millis``) of the source's valid records in the run's batches before b,
    minus the delay (whole milliseconds); a valid record whose event time is at or behind it (``<=``,
    in microseconds) is late. Before a source's first valid record it has no watermark. Valid
    records are the ledger's ``VALID_FAULTS`` (malformed records are quarantined and never move a
    watermark); late ones count in the maxima as silver counts them (they cannot move them).

    A valid record in no batch must be a copy the dedup operator dropped (it never reaches the
    batch, so it neither counts nor can be late): another record with its natural key has a batch.
    Any other valid record without a batch is an error (``AssertionError``): the replay would have
    to guess where it was read.
    """
    out = LateReplay()
    runs: dict[str, dict[int, list[tuple]]] = {}
    kept_keys: set[tuple] = set()
    unplaced: list[tuple] = []
    for rec in ledger:
        kind = kind_of.get(rec["topic"])
        if kind is None or rec["fault"] not in VALID_FAULTS:
            continue
        c = coords(rec)
        payload = json.loads(rec["value"])
        out.kinds[c] = kind
        out.event_us[c] = event_micros(payload["timestamp"])
        batch = batch_of.get(c)
        if batch is None:
            unplaced.append((c, kind, natural_key(kind, payload)))
            continue
        out.batch[c] = run_batch = _batch_key(batch)
        kept_keys.add((kind, natural_key(kind, payload)))
        runs.setdefault(run_batch[0], {}).setdefault(run_batch[1], []).append(c)
    lost = [(c, kind) for c, kind, key in unplaced if (kind, key) not in kept_keys]
    assert not lost, (f"{len(lost)} valid records of the ledger are in no silver table and are no dropped copy of one "
                      f"that is (quarantined? lost?), e.g. " + "; ".join(
                          f"{c} ({kind}, event time {iso_micros(out.event_us[c])})" for c, kind in lost[:5]))
    out.dropped = {c for c, _, _ in unplaced}
    delays_ms = {kind: int(s * 1000) for kind, s in delays_s.items()}  # as silver.watermarks.EventClock
    for run, batches in runs.items():
        max_ms: dict[str, int] = {}
        for b in sorted(batches):
            wm = {kind: (max_ms[kind] - d if kind in max_ms else None) for kind, d in delays_ms.items()}
            out.watermarks[(run, b)] = wm
            for c in batches[b]:
                w = wm[out.kinds[c]]
                if w is not None and out.event_us[c] <= w * 1000:
                    out.late.add(c)
            for c in batches[b]:
                kind, ms = out.kinds[c], out.event_us[c] // 1000
                max_ms[kind] = max(max_ms.get(kind, ms), ms)
    return out


def late_mismatch(replay: LateReplay, actual: set[tuple], recorded_ms: dict[tuple, int] | None = None,
                  examples: int = 5) -> str:
    """'' when ``actual`` (the coordinates in silver.late_records) is the replay's late set, else a
    message naming a few records of each difference: found late by the replay but not in the late
    ledger, in the late ledger but on time by the replay (``recorded_ms``: the watermark silver
    recorded with each late row, shown beside the replay's)."""
    missing = sorted(replay.late - actual)
    extra = sorted(actual - replay.late)
    if not missing and not extra:
        return ""
    runs = {b[0] for b in replay.batch.values()}

    def batch(c):
        run, b = replay.batch[c]
        return f"batch {b}" + (f" of {run}" if len(runs) > 1 else "")

    def wm(ms):
        return "no watermark yet" if ms is None else f"watermark {iso_micros(ms * 1000)}"

    def why_missing(c):
        return (f"{c} {replay.kinds[c]} {batch(c)}: event time {iso_micros(replay.event_us[c])} at or behind its "
                f"{wm(replay.watermark_of(c))}")

    def why_extra(c):
        if c not in replay.batch:
            return f"{c}: not a valid record of the ledger read by silver"
        seen = ("" if recorded_ms is None or c not in recorded_ms
                else f" (silver recorded {wm(recorded_ms[c])})")
        return (f"{c} {replay.kinds[c]} {batch(c)}: event time {iso_micros(replay.event_us[c])} after its "
                f"{wm(replay.watermark_of(c))}{seen}")

    parts = ["silver.late_records differs from the replay of silver's micro-batches (each judged by the "
             "watermark the batches before it left):"]
    if missing:
        parts.append(f"{len(missing)} late records missing from it, e.g. " +
                     "; ".join(why_missing(c) for c in missing[:examples]))
    if extra:
        parts.append(f"{len(extra)} records wrongly in it, e.g. " + "; ".join(why_extra(c) for c in extra[:examples]))
    return " ".join(parts)


class SilverOracle:
    """What silver must hold, given which records it found behind its watermark (``late``: their
    coordinates). Which records are late depends on micro-batch boundaries, as in Spark, so the
    late set is an input: ``tests.checks.check_late`` checks it on its own, both ways, against a
    replay of silver's batches (``replay_lateness``: each batch judged by the watermark the batches
    before it left, the boundaries read from the lake's commits); everything else follows."""

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


def _fmt_ms(ts) -> str:
    """``_fmt`` with milliseconds: compares with ``_fmt``'s window ends as text in time order."""
    return ts.strftime("%Y-%m-%d %H:%M:%S.") + f"{ts.microsecond // 1000:03d}"


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
        self.delays = {src.kind: interval_seconds(src.watermark) for src in settings.sources}

    def closed_by(self, table: str) -> str:
        """The end of the last window of KPIs over silver ``table`` that is complete, after a run
        whose last gold batch read all of silver: silver's final watermark of the table's source,
        its greatest valid event time (to the millisecond, as silver) less the source's delay
        (``gold.windows``). A window ending later stays open: no later record has closed it."""
        from datetime import timedelta

        kind = "orders" if table == "order_items" else table
        if not self.s.on_time_records(kind):
            return ""  # no record: no watermark, nothing closed
        last = max(self._ts(json.loads(r["value"])) for r in self.s.on_time_records(kind))
        last = last.replace(microsecond=last.microsecond // 1000 * 1000)
        return _fmt_ms(last - timedelta(seconds=self.delays[kind]))

    def split(self, kpi) -> tuple[dict, dict]:
        """``kpi``'s rows as (closed windows, open windows): what ``gold.<kpi>`` and ``gold.<kpi>_open`` hold."""
        rows, by = getattr(self, kpi.name)(), self.closed_by(kpi.source)
        closed = {k: v for k, v in rows.items() if k[1] <= by}
        return closed, {k: v for k, v in rows.items() if k not in closed}

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
