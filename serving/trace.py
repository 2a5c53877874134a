"""``lakehouse trace``: one record's whole path through the lake, answered from the tables.

``trace order <order_id>`` starts from every Kafka record carrying that order (the original and
any duplicates); ``trace kafka <topic> <partition> <offset>`` from one record of any source topic.
For each record: its Kafka coordinates and timestamp, its bronze row, then its fate in silver —
the silver row(s), or the quarantine row and its reason, or the late-ledger row and the watermark
it missed, or the record whose copy silver kept (a duplicate) — then every gold row that counts
it (each KPI window and group, in ``gold.<kpi>`` once closed or ``gold.<kpi>_open`` until then, the
enriched order) and, for an order, its message in
``commandes-enrichies``. The tables are read without Spark (``serving.native``: delta-rs, with
data skipping on the lookup columns), so a trace answers in about a second; nothing here writes.
Times are UTC.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from serving.native import NativeLake, literal
from common.settings import Settings

COORDS = ("topic", "partition", "offset")


@dataclass
class Node:
    """One step of a record's path: ``label`` (a table or topic), ``text`` (what it says), ``row``
    (the row itself, for --format json) and the steps after it."""

    label: str
    text: str
    row: dict | None = None
    children: list["Node"] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {"step": self.label, "text": self.text}
        if self.row is not None:
            out["row"] = self.row
        if self.children:
            out["next"] = [c.to_dict() for c in self.children]
        return out

    def lines(self, prefix: str = "", last: bool = True, root: bool = True) -> list[str]:
        head = "" if root else prefix + ("└─ " if last else "├─ ")
        out = [f"{head}{self.label}  {self.text}".rstrip()]
        inner = "" if root else prefix + ("   " if last else "│  ")
        for i, c in enumerate(self.children):
            out += c.lines(inner, i == len(self.children) - 1, root=False)
        return out


def _ts(value: datetime) -> str:
    """A timestamp as the trace prints it: UTC, milliseconds only when there are some."""
    utc = value.astimezone(timezone.utc) if value.tzinfo else value
    text = f"{utc:%Y-%m-%d %H:%M:%S}"
    return text + (f".{utc.microsecond // 1000:03d}" if utc.microsecond else "")


def _show(value) -> str:
    return _ts(value) if isinstance(value, datetime) else str(value)


def _fmt(row: dict, *names: str) -> str:
    return ", ".join(f"{n}={_show(row[n])}" for n in names if n in row and row[n] is not None)


def _coords(row: dict) -> str:
    return f"{row['topic']}[{row['partition']}]@{row['offset']}"


def _at(row: dict) -> dict:
    """A record's Kafka coordinates, as column equalities."""
    return {c: row[c] for c in COORDS}


def _kind_of(settings: Settings, topic: str) -> str | None:
    src = settings.source_of_topic(topic)
    return src.kind if src else None


def _bronze(settings: Settings, kind: str) -> str:
    return f"bronze.{settings.source(kind).bronze_table}"


def _gold(lake: NativeLake, kind: str, silver_row: dict) -> list[Node]:
    """The gold rows that count ``silver_row`` (a row of silver.<kind>, or of order_items)."""
    from gold.transforms import KPIS, OPEN_SUFFIX

    nodes = []
    for kpi, keys in ((k.name, k.keys) for k in KPIS if k.source == kind):
        t = literal(silver_row["event_time"])
        rows = []
        for table in (f"gold.{kpi}", f"gold.{kpi}{OPEN_SUFFIX}"):  # its closed windows, then its open ones
            found = lake.rows(table, where=f"window_start <= {t} AND window_end > {t}", order_by="window_start",
                              **{k: silver_row[k] for k in keys})
            for r in found:
                measures = [c for c in r if c not in ("window_start", "window_end") and c not in keys]
                nodes.append(Node(table, f"window {_ts(r['window_start'])} - {_ts(r['window_end'])} "
                                  f"{_fmt(r, *keys)}: {_fmt(r, *measures)}", r))
            rows += found
        if not rows:
            nodes.append(Node(f"gold.{kpi}", "no row yet (gold has not processed it)"))
    return nodes


PUBLISH_MARGIN_S = 120  # a published message is within this of the commit of its gold.orders_enriched row


def _published(settings: Settings, lake: NativeLake, order: dict, since: datetime) -> list[Node]:
    """The order's committed messages in the enriched topic (read as a ``read_committed`` consumer:
    a copy from an aborted transaction is not one), in the partition its key (customer_id) hashes
    to, read around the time its gold.orders_enriched row was committed (gold appends a batch, then
    publishes it), never before the order reached Kafka."""
    from kafka import TopicPartition
    from kafka.partitioner.default import murmur2

    from common.clients import kafka_consumer

    written = lake.file_times("gold.orders_enriched", "order_id", order["order_id"])
    start_ms = int(since.timestamp() * 1000)
    end_ms = None
    if written:
        start_ms = max(start_ms, int(written[0].timestamp() * 1000) - PUBLISH_MARGIN_S * 1000)
        end_ms = int(written[-1].timestamp() * 1000) + PUBLISH_MARGIN_S * 1000
    consumer = kafka_consumer(settings, "lakehouse-trace", consumer_timeout_ms=3000, isolation_level="read_committed")
    try:
        partitions = sorted(consumer.partitions_for_topic(settings.topic_enriched) or ())
        if not partitions:
            return [Node(f"kafka {settings.topic_enriched}", "topic not found")]
        key = str(order["customer_id"]).encode()
        tp = TopicPartition(settings.topic_enriched, partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)])
        consumer.assign([tp])
        end = consumer.end_offsets([tp])[tp]
        start = consumer.offsets_for_times({tp: start_ms}).get(tp)
        if start is None:
            return [Node(f"kafka {settings.topic_enriched}", "not published yet")]
        consumer.seek(tp, start.offset)
        found, read, passed, deadline = [], 0, False, time.monotonic() + 60
        while consumer.position(tp) < end and not passed and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000, max_records=5000).values():
                for m in records:
                    read += 1
                    passed = passed or (end_ms is not None and m.timestamp > end_ms)
                    if m.key == key and json.loads(m.value).get("order_id") == order["order_id"]:
                        at = datetime.fromtimestamp(m.timestamp / 1000, timezone.utc)
                        found.append(Node(f"kafka {m.topic}[{m.partition}]@{m.offset}",
                                          f"published {_ts(at)}: {m.value.decode()}",
                                          {"partition": m.partition, "offset": m.offset, "timestamp": m.timestamp,
                                           "value": m.value.decode()}))
        if found:
            return found
        if not passed and consumer.position(tp) < end:
            return [Node(f"kafka {settings.topic_enriched}", f"not found in {read} messages of partition "
                         f"{tp.partition} from offset {start.offset} (search stopped after 60 s)")]
        if written:  # its row is in gold: the message was searched around the row's file time only
            return [Node(f"kafka {settings.topic_enriched}", f"not found in partition {tp.partition} within "
                         f"{PUBLISH_MARGIN_S} s of its gold.orders_enriched file ({read} messages read; a file "
                         "rewritten by OPTIMIZE has a later time)")]
        return [Node(f"kafka {settings.topic_enriched}", f"not published yet ({read} messages read)")]
    finally:
        consumer.close()


def _fate(lake: NativeLake, settings: Settings, kind: str, bronze: dict, winners: dict) -> list[Node]:
    """What silver did with one bronze record, and everything after it."""
    silver_table = f"silver.{kind}"
    rows = lake.rows(silver_table, **_at(bronze))
    if rows:
        nodes = []
        for r in rows:
            node = Node(silver_table, "kept: " + _fmt(r, *[c for c in r if c not in COORDS + ("kafka_timestamp",)]), r)
            if kind == "orders":
                for it in lake.rows("silver.order_items", order_by="line", order_id=r["order_id"]):
                    item = Node("silver.order_items", _fmt(it, "line", "product_id", "product_name", "quantity",
                                                           "unit_price", "subtotal"), it)
                    item.children = _gold(lake, "order_items", it)
                    node.children.append(item)
                enriched = lake.rows("gold.orders_enriched", order_id=r["order_id"])
                node.children += [Node("gold.orders_enriched", _fmt(e, "segment", "ville", "nom", "total",
                                                                     "customer_known"), e) for e in enriched]
                if not enriched:
                    node.children.append(Node("gold.orders_enriched", "no row yet (gold has not processed it)"))
                node.children += _gold(lake, kind, r)
                node.children += _published(settings, lake, r, bronze["timestamp"])
            else:
                node.children += _gold(lake, kind, r)
            nodes.append(node)
        return nodes
    q = lake.rows("silver.quarantine", **_at(bronze))
    if q:
        return [Node("silver.quarantine", f"quarantined: {r['reason']} (target {r['target_table']})", _text(r))
                for r in q]
    late = lake.rows("silver.late_records", **_at(bronze))
    if late:
        return [Node("silver.late_records", f"late: event_time {_ts(r['event_time'])} was "
                     f"{r['lateness_seconds']:.0f} s behind the watermark {_ts(r['watermark'])} "
                     f"(delay {r['watermark_delay_seconds']:.0f} s)", _text(r))
                for r in late]
    winner = winners.get(bronze.get("natural_key"))
    if winner and winner != _at(bronze):
        return [Node("silver", f"duplicate: silver kept {_coords(winner)} with the same key "
                     "(dropped by the within-watermark dedup)")]
    return [Node("silver", "not in silver, quarantine or the late ledger yet (silver has not processed it)")]


def _text(row: dict) -> dict:
    """A row with its binary Kafka key and value as text."""
    return {k: v.decode(errors="replace") if isinstance(v, bytes) else v for k, v in row.items()}


def _bronze_nodes(lake: NativeLake, settings: Settings, kind: str, bronze_rows: list[dict], key_of) -> list[Node]:
    """Nodes for bronze records of one kind; duplicates are told apart by the natural key."""
    winners: dict = {}
    for b in bronze_rows:
        b["natural_key"] = key_of(b)
    keys = {b["natural_key"] for b in bronze_rows if b["natural_key"] is not None}
    for k in keys:
        kept = _kept_with_key(lake, kind, k)
        if kept:
            winners[k] = _at(kept)
    out = []
    for b in sorted(bronze_rows, key=lambda r: (r["timestamp"], r["partition"], r["offset"])):
        kafka = Node(f"kafka {_coords(b)}", f"timestamp {_ts(b['timestamp'])}, key {b['key']}")
        bronze = Node(_bronze(settings, kind), f"value {(b['value'] or '')[:160]}",
                      {k: v for k, v in b.items() if k != "natural_key"})
        bronze.children = _fate(lake, settings, kind, b, winners)
        kafka.children.append(bronze)
        out.append(kafka)
    return out


def _kept_with_key(lake: NativeLake, kind: str, key) -> dict | None:
    """The silver row with natural key ``key``, for orders (``order_id``). Logs' and metrics' natural
    keys span several fields of the record (``silver.transforms.dedup_columns``); a trace does not
    look them up, so it tells no duplicates for them."""
    if kind != "orders" or not isinstance(key, int):
        return None
    rows = lake.rows("silver.orders", columns='topic, "partition", "offset"', limit=1, order_id=key)
    return rows[0] if rows else None


def _bronze_rows(lake: NativeLake, table: str, where: str) -> list[dict]:
    return [_text(r) for r in lake.rows(table, where=where, columns='topic, "partition", "offset", "timestamp", '
                                        "arrow_cast(key, 'Utf8') AS key, arrow_cast(value, 'Utf8') AS value")]


def trace_order(settings: Settings, order_id, lake: NativeLake | None = None) -> Node:
    lake = lake or NativeLake(settings)
    order_id = str(order_id).strip()
    table = _bronze(settings, "orders")
    # every record whose text holds the id, then exactly those whose order_id is it (number or text)
    candidates = _bronze_rows(lake, table, f"arrow_cast(value, 'Utf8') LIKE {literal('%' + order_id + '%')}")
    rows = [b for b in candidates if str(_json_field(b["value"], "order_id")) == order_id]
    root = Node(f"order {order_id}", f"{len(rows)} Kafka record(s) in {table}")
    if not rows:
        root.text = f"no record of this order in {table} (not produced, or bronze has not read it yet)"
    root.children = _bronze_nodes(lake, settings, "orders", rows, lambda b: _json_field(b["value"], "order_id"))
    return root


def trace_kafka(settings: Settings, topic: str, partition: int, offset: int, lake: NativeLake | None = None) -> Node:
    from common.errors import SettingsError

    kind = _kind_of(settings, topic)
    if kind is None:
        raise SettingsError(f"topic {topic!r} is not a source topic; valid: {', '.join(settings.source_topics)}")
    lake = lake or NativeLake(settings)
    table = _bronze(settings, kind)
    rows = _bronze_rows(lake, table, " AND ".join(f'"{c}" = {literal(v)}' for c, v in
                                                   (("topic", topic), ("partition", int(partition)),
                                                    ("offset", int(offset)))))
    root = Node(f"record {topic}[{partition}]@{offset}", f"in {table}" if rows else
                f"not in {table} (bronze has not read it yet, or the offset does not exist)")
    key_of = (lambda b: _json_field(b["value"], "order_id")) if kind == "orders" else (lambda b: None)
    root.children = _bronze_nodes(lake, settings, kind, rows, key_of)
    return root


def _json_field(value: str | None, name: str):
    try:
        return json.loads(value).get(name) if value else None
    except (ValueError, AttributeError):
        return None
