"""Event generator for the three seed topics (``lakehouse produce``).

Payloads follow the seed notebooks (see DESIGN.md). Everything random comes from one
``random.Random(seed)``, and event times come from a simulated clock (wall clock by default,
or ``--start-time``, records ``--event-spacing`` seconds apart), so the same seed and start
time give the same records. A record's event time is its simulated arrival time unless it is a
late record (event time = arrival - late_by). Records are sent with the time they are sent as
their Kafka timestamp: a replay of last month keeps its dates in the payload, and the broker's
time-based retention does not delete it as soon as it lands.

Every record sent, faulty or not, is appended to a JSON-lines ledger with its partition and
offset and the fault it carries, so tests and benchmarks recompute expected results from it.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

from common.errors import SettingsError, UnreachableError
from common.progress import Progress
from common.settings import Settings

# A paced producer sends in bursts of this many seconds' records, not one record per sleep: each
# sleep and each wake of kafka-python's sender thread costs more than a record (`python -m
# bench.gencost`, 800 orders/s + logs + metrics: 0.81 of a core with a sleep per record, 0.35 in
# 20 ms bursts; bench/README.md, 2026-12-05). Kafka timestamps move by less than a burst.
PACE_SECONDS = 0.02

PRODUCTS = [  # (product_id, name, unit price) from the seed notebooks
    (1, "Laptop", 999.99), (2, "Souris", 29.99), (3, "Clavier", 79.99), (4, "Ecran", 349.99),
    (5, "Casque", 149.99), (6, "Webcam", 89.99), (7, "SSD", 129.99), (8, "USB Hub", 39.99),
]
ORDER_STATUSES = ("created",)
LEVELS = ("INFO", "INFO", "INFO", "WARNING", "ERROR")
MODULES = ("auth", "payment", "catalog", "cart", "shipping")
HOSTS = tuple(f"server-{i:02d}" for i in range(1, 6))
MALFORMED_KINDS = {
    "orders": ("truncated_json", "not_json", "wrong_type", "missing_field", "negative_quantity"),
    "logs": ("truncated_json", "not_json", "wrong_type", "missing_field"),
    "metrics": ("truncated_json", "not_json", "wrong_type", "missing_field"),
}


@dataclass
class GenOptions:
    topics: tuple[str, ...]
    count: int | None = 100          # per topic; None = until duration
    duration: float | None = None    # seconds
    rate: float = 0.0                # records/s per topic; 0 = as fast as possible
    seed: int = 42
    customers: int = 20
    duplicate_pct: float = 0.0
    late_pct: float = 0.0
    late_by: float = 600.0           # seconds
    malformed_pct: float = 0.0
    start_time: datetime | None = None
    event_spacing: float = 0.001     # seconds of event time between records when rate is 0
    first_order_id: int | None = None
    ledger: Path | None = None
    # fields a producer added (schema drift): path -> value in every valid record of a topic that
    # has the path's object (``channel``, ``metrics.gpu_percent``, ``items.color``: in each item)
    extra_fields: dict | None = None
    progress: bool = True

    def validate(self) -> None:
        for name in ("duplicate_pct", "late_pct", "malformed_pct"):
            v = getattr(self, name)
            if not 0 <= v <= 100:
                raise SettingsError(f"--{name.replace('_', '-')} must be between 0 and 100, got {v}")
        if self.duplicate_pct + self.late_pct + self.malformed_pct > 100:
            raise SettingsError("--duplicate-pct + --late-pct + --malformed-pct must not exceed 100")
        if self.count is None and self.duration is None:
            raise SettingsError("give --count or --duration")
        if self.count is not None and self.count < 0:
            raise SettingsError("--count must be >= 0")
        if not 1 <= self.customers <= 999:
            raise SettingsError("--customers must be between 1 and 999")
        if self.rate < 0:
            raise SettingsError("--rate must be >= 0 (0 = as fast as possible)")
        if self.event_spacing <= 0:
            raise SettingsError("--event-spacing must be > 0 seconds")


def _iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


@dataclass
class _Clock:
    """Simulated event clock: record i happens at start + i / rate (``spacing`` apart when rate is
    0), so event times are distinct and a paced run follows the wall clock."""

    start: datetime | None
    rate: float
    spacing: float = 0.001

    def __post_init__(self):
        self.start = self.start or datetime.now(timezone.utc)

    def at(self, i: int) -> datetime:
        step = 1.0 / self.rate if self.rate else self.spacing
        return self.start + timedelta(seconds=i * step)


class EventFactory:
    """Builds (key, value, fault, fields) tuples for one topic kind; pure, no I/O."""

    def __init__(self, kind: str, opts: GenOptions, rng: random.Random, first_order_id: int):
        self.kind, self.o, self.rng = kind, opts, rng
        self.next_order_id = first_order_id
        self.sent_orders: list[tuple[str, str, dict]] = []  # valid on-time orders, for duplicates

    def _customer(self) -> str:
        return f"CUST-{self.rng.randint(1, self.o.customers):03d}"

    def valid(self, event_time: datetime) -> tuple[str | None, dict]:
        key, payload = self._valid(event_time)
        for path, value in (self.o.extra_fields or {}).items():
            head, _, leaf = path.rpartition(".")
            targets = [payload] if not head else payload.get(head)
            for target in targets if isinstance(targets, list) else [targets]:
                if isinstance(target, dict):
                    target[leaf] = value
        return key, payload

    def _valid(self, event_time: datetime) -> tuple[str | None, dict]:
        r = self.rng
        if self.kind == "orders":
            items = []
            for _ in range(r.randint(1, 4)):
                pid, name, price = r.choice(PRODUCTS)
                qty = r.randint(1, 5)
                items.append({"product_id": pid, "product_name": name, "quantity": qty,
                              "unit_price": price, "subtotal": round(qty * price, 2)})
            order = {"order_id": self.next_order_id, "customer_id": self._customer(),
                     "timestamp": _iso(event_time), "items": items,
                     "total": round(sum(i["subtotal"] for i in items), 2), "status": r.choice(ORDER_STATUSES)}
            self.next_order_id += 1
            return order["customer_id"], order
        if self.kind == "logs":
            level = r.choice(LEVELS)
            return None, {"timestamp": _iso(event_time), "level": level, "module": r.choice(MODULES),
                          "message": f"{level.lower()} event {r.randint(1, 10**6)}",
                          "request_id": f"req-{r.getrandbits(32):08x}",
                          "user_id": f"user-{r.randint(1, 500):04d}", "duration_ms": r.randint(1, 2000)}
        host = r.choice(HOSTS)
        return host, {"timestamp": _iso(event_time), "host": host, "metrics": {
            "cpu_percent": round(r.uniform(1, 99), 2), "memory_percent": round(r.uniform(10, 95), 2),
            "disk_percent": round(r.uniform(5, 90), 2), "response_time_ms": round(r.uniform(5, 800), 1)}}

    def malformed(self, event_time: datetime) -> tuple[str | None, str, str]:
        kind = self.rng.choice(MALFORMED_KINDS[self.kind])
        key, payload = self.valid(event_time)
        if kind == "truncated_json":
            text = json.dumps(payload)
            return key, text[: max(1, len(text) // 2)], kind
        if kind == "not_json":
            return key, f"<<corrupted {self.rng.getrandbits(24):06x}>>", kind
        if kind == "missing_field":
            payload.pop({"orders": "order_id", "logs": "level", "metrics": "host"}[self.kind])
        elif kind == "wrong_type":
            if self.kind == "orders":
                payload["total"] = "beaucoup"
            elif self.kind == "logs":
                payload["duration_ms"] = "slow"
            else:
                payload["metrics"]["cpu_percent"] = "high"
        elif kind == "negative_quantity":
            item = payload["items"][0]
            item["quantity"] = -item["quantity"]
            item["subtotal"] = round(item["quantity"] * item["unit_price"], 2)
            payload["total"] = round(sum(i["subtotal"] for i in payload["items"]), 2)
        return key, json.dumps(payload), kind

    def next(self, now: datetime) -> dict:
        """One record: {key, value, fault, event_time, arrival}."""
        roll = self.rng.uniform(0, 100)
        o = self.o
        if roll < o.malformed_pct:
            key, value, kind = self.malformed(now)
            return {"key": key, "value": value, "fault": f"malformed:{kind}"}
        roll -= o.malformed_pct
        if roll < o.duplicate_pct:
            if self.kind == "orders" and self.sent_orders:
                key, value, _ = self.rng.choice(self.sent_orders)
                return {"key": key, "value": value, "fault": "duplicate"}
            late = False  # nothing to re-send (logs, metrics, the first order): an ordinary record
        else:
            late = roll - o.duplicate_pct < o.late_pct
        event_time = now - timedelta(seconds=o.late_by) if late else now
        key, payload = self.valid(event_time)
        value = json.dumps(payload)
        if self.kind == "orders" and not late:
            self.sent_orders.append((key, value, payload))
        return {"key": key, "value": value, "fault": "late" if late else None}


def topic_kinds(settings: Settings) -> dict[str, str]:
    return {src.topic: src.kind for src in settings.sources}


def _first_order_id(ledger: Path | None) -> int:
    """Continue order ids after those already in the ledger, so appended runs never collide."""
    if ledger is None or not ledger.exists():
        return 1
    top = 0
    with ledger.open() as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("order_id"):
                top = max(top, rec["order_id"])
    return top + 1


def generate(settings: Settings, opts: GenOptions) -> Iterator[tuple[str, dict]]:
    """Yield (topic, record) in send order, without any I/O (used by tests and produce)."""
    opts.validate()
    kinds = topic_kinds(settings)
    unknown = [t for t in opts.topics if t not in kinds]
    if unknown:
        raise SettingsError(f"--topic {unknown[0]!r} is not a generator topic; valid: {', '.join(kinds)}, all")
    rng = random.Random(opts.seed)
    first = opts.first_order_id if opts.first_order_id is not None else _first_order_id(opts.ledger)
    factories = {t: EventFactory(kinds[t], opts, rng, first) for t in opts.topics}
    clock = _Clock(opts.start_time, opts.rate, opts.event_spacing)
    deadline = None if opts.duration is None else time.monotonic() + opts.duration
    i = 0
    while True:
        if opts.count is not None and i >= opts.count:
            return
        if deadline is not None and time.monotonic() >= deadline:
            return
        now = clock.at(i)
        for topic in opts.topics:
            rec = factories[topic].next(now)
            rec["arrival"] = _iso(now)
            if kinds[topic] == "orders":
                try:
                    rec["order_id"] = json.loads(rec["value"]).get("order_id")
                except (ValueError, AttributeError):
                    rec["order_id"] = None
            yield topic, rec
        i += 1


def produce(settings: Settings, opts: GenOptions, out=sys.stderr) -> dict[str, int]:
    """Send generated records to Kafka and append them to the ledger; return counts per topic."""
    from kafka.errors import KafkaError

    from common.clients import kafka_producer
    from common.streams import ensure_topics_exist

    ensure_topics_exist(settings, opts.topics, role="producer")  # unreachable broker / unknown topic: one line, fast
    try:
        producer = kafka_producer(settings, "lakehouse-generator", acks="all", enable_idempotence=True, linger_ms=5,
                                  max_block_ms=60000, bootstrap_timeout_ms=5000, compression_type=None)
    except KafkaError as e:
        raise UnreachableError(f"cannot connect a producer to {settings.kafka_bootstrap_servers}: {e}") from None
    ledger_f = None
    if opts.ledger:
        opts.ledger.parent.mkdir(parents=True, exist_ok=True)
        ledger_f = opts.ledger.open("a")
    counts = {t: 0 for t in opts.topics}
    pending: list[tuple[str, dict, object]] = []
    t0 = time.monotonic()
    sent = 0
    progress = Progress("produce", total=opts.count * len(opts.topics) if opts.count else None, out=out,
                        enabled=opts.progress)

    def drain():
        for topic, rec, fut in pending:
            md = fut.get(timeout=180)  # retried by the client across a broker restart
            rec.update(topic=topic, partition=md.partition, offset=md.offset)
            if ledger_f:
                ledger_f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        pending.clear()

    try:
        for topic, rec in generate(settings, opts):
            fut = producer.send(topic, key=rec["key"].encode() if rec["key"] else None,
                                value=rec["value"].encode())  # Kafka timestamp: the time it is sent
            pending.append((topic, rec, fut))
            counts[topic] += 1
            sent += 1
            if len(pending) >= 5000:
                producer.flush()
                drain()
            if opts.rate:
                target = t0 + sent / (opts.rate * len(opts.topics))
                delay = target - time.monotonic()
                if delay > PACE_SECONDS:
                    time.sleep(delay)  # pacing the producer, not waiting for a stream
            progress.update()
        producer.flush()
        drain()
    finally:
        progress.close()
        producer.close(timeout=10)
        if ledger_f:
            ledger_f.close()
    elapsed = max(time.monotonic() - t0, 1e-9)
    if opts.progress:
        per_topic = ", ".join(f"{t}: {n}" for t, n in counts.items())
        print(f"produced {sent} records in {elapsed:.1f}s ({sent / elapsed:.0f}/s) - {per_topic}"
              + (f"; ledger {opts.ledger}" if opts.ledger else ""), file=out, flush=True)
    return counts


def read_ledger(path: Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]
