"""Silver transforms: pure DataFrame -> DataFrame functions, shared by stream and batch.

``classify(bronze_df, kind, max_ahead_seconds)`` parses the Kafka value with an explicit schema
and gives every record exactly one ``route``: ``valid``, ``quarantine`` (with a machine-readable
``reason``) or ``drop``. Parsing never turns a bad record into a row of nulls: the JSON is first
read with every leaf as a string (so a missing field and a field of the wrong type can be told
apart), then each field is converted with ``try_cast``; any failure is a reason. An event time
more than ``max_ahead_seconds`` ahead of the record's Kafka timestamp is quarantined
(``event_time_in_future``): one absurd clock (year 2099) must not push the watermark past every
record after it.

Lateness is not decided here: the silver job judges it by each source's event-time watermark
(``silver.watermarks``), which only valid event times move. ``dedupe`` drops duplicates;
``to_table``, ``to_order_items``, ``to_quarantine``, ``to_late`` shape the rows of
each silver table; ``outcomes`` counts rules and routes of a batch in one pass.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, StringType, StructField, StructType

from common.settings import interval_seconds
from silver.rules import record_predicate, record_rules

CORRUPT = "_corrupt_record"
RESCUED = "_rescued_data"  # per row: the fields its payload had that the schema does not know, as JSON
FUTURE_REASON = "event_time_in_future"
COORDINATES = ("topic", "partition", "offset", "kafka_timestamp")


@dataclass(frozen=True)
class Field:
    name: str             # silver column
    source: str           # expression over the all-string parse ``raw``
    type: str             # Spark SQL type
    required: bool = True
    json: str = ""        # the payload's name for it, in reasons (default: ``name``)

    @property
    def label(self) -> str:
        return self.json or self.name


def _strings(*names: str) -> list[StructField]:
    return [StructField(n, StringType()) for n in names]


ITEM_FIELDS = (Field("product_id", "product_id", "int"), Field("product_name", "product_name", "string"),
               Field("quantity", "quantity", "int"), Field("unit_price", "unit_price", "double"),
               Field("subtotal", "subtotal", "double"))

@dataclass(frozen=True)
class ParseSpec:
    """How silver parses one source's JSON: the all-string schema it reads the payload with
    (``raw``: a wrong type is a reason, never a null), the typed fields it keeps, the natural key
    duplicates are recognised by, and the silver table it feeds."""

    raw: StructType
    fields: tuple[Field, ...]
    key: tuple[str, ...]
    table: str

    @property
    def known(self) -> tuple[str, ...]:
        """The payload's top-level field names the schema knows."""
        return tuple(f.name for f in self.raw.fields if f.name != CORRUPT)

    def unknown(self) -> list[Column]:
        """Step 1 of the rescue, over ``fields`` (the payload read as a map of variants: every
        top-level field, typed as sent): per level, the map of the fields the schema does not know
        (``unknown``, ``unknown_<object>``; ``unknown_<array>``: one map per element), each built
        once (step 2 reads them several times)."""
        cols = [F.expr(_unknown("fields", self.raw)).alias("unknown")]
        for f in self.raw.fields:
            if isinstance(f.dataType, StructType):
                cols.append(F.expr(_unknown(f"try_variant_get(fields['{f.name}'], '$', 'map<string,variant>')",
                                            f.dataType)).alias(f"unknown_{f.name}"))
            elif _is_object_array(f.dataType):
                cols.append(F.expr(f"transform({_object_array(f)}, x -> {_unknown('x', f.dataType.elementType)})")
                            .alias(f"unknown_{f.name}"))
        return cols

    def rescued(self) -> list[Column]:
        """Step 2: ``_rescued_data``, the unknown fields as JSON (a nested object's under its
        name: ``{"region": "eu", "metrics": {"gpu_percent": 9.5}}``), and ``rescued_fields``, their
        paths (``metrics.gpu_percent``), both null when there are none. An array of objects (an
        order's ``items``) is rescued per element (``rescued_<array>``: JSON per element), into the
        rows it is exploded to."""
        rescued, paths, cols = "unknown", ["map_keys(unknown)"], []
        for f in self.raw.fields:
            u = f"unknown_{f.name}"
            if isinstance(f.dataType, StructType):
                rescued = (f"CASE WHEN cardinality({u}) > 0 THEN map_concat({rescued}, "
                           f"map('{f.name}', to_variant_object({u}))) ELSE {rescued} END")
                paths.append(f"transform(coalesce(map_keys({u}), array()), k -> '{f.name}.' || k)")
            elif _is_object_array(f.dataType):
                cols.append(F.expr(f"transform({u}, m -> CASE WHEN cardinality(m) > 0 THEN to_json(m) END)")
                            .alias(f"rescued_{f.name}"))
                paths.append(f"flatten(transform(coalesce({u}, array()), m -> transform(map_keys(m), "
                             f"k -> '{f.name}.' || k)))")
        path_sql = f"array_distinct(concat({', '.join(paths)}))" if len(paths) > 1 else paths[0]
        return [F.expr(f"CASE WHEN cardinality({rescued}) > 0 THEN to_json({rescued}) END").alias(RESCUED),
                F.expr(f"CASE WHEN size({path_sql}) > 0 THEN {path_sql} END").alias("rescued_fields"), *cols]

    @property
    def rescue_columns(self) -> tuple[str, ...]:
        """The rescue's intermediate columns, dropped once the rows are typed."""
        return ("fields", "unknown", *(f"unknown_{f.name}" for f in self.raw.fields
                                       if isinstance(f.dataType, StructType) or _is_object_array(f.dataType)),
                *(f"rescued_{f.name}" for f in self.raw.fields if _is_object_array(f.dataType)))


KINDS = {
    "orders": ParseSpec(
        raw=StructType(_strings("order_id", "customer_id", "timestamp")
                       + [StructField("items", ArrayType(StructType(_strings(*(f.name for f in ITEM_FIELDS)))))]
                       + _strings("total", "status", CORRUPT)),
        fields=(Field("order_id", "raw.order_id", "int"), Field("customer_id", "raw.customer_id", "string"),
                Field("event_time", "raw.timestamp", "timestamp", json="timestamp"), Field("total", "raw.total", "double"),
                Field("status", "raw.status", "string")),
        key=("order_id",),
        table="orders",
    ),
    "logs": ParseSpec(
        raw=StructType(_strings("timestamp", "level", "module", "service", "message", "request_id", "user_id",
                                "duration_ms", CORRUPT)),
        fields=(Field("event_time", "raw.timestamp", "timestamp", json="timestamp"), Field("level", "raw.level", "string"),
                Field("module", "coalesce(raw.module, raw.service)", "string"),
                Field("message", "raw.message", "string"),
                Field("request_id", "raw.request_id", "string", required=False),
                Field("user_id", "raw.user_id", "string", required=False),
                Field("duration_ms", "raw.duration_ms", "int", required=False)),
        key=("request_id", "event_time", "level", "module"),
        table="logs",
    ),
    "metrics": ParseSpec(
        raw=StructType(_strings("timestamp", "host")
                       + [StructField("metrics", StructType(_strings(
                           "cpu_percent", "memory_percent", "disk_percent", "response_time_ms")))]
                       + _strings(CORRUPT)),
        fields=(Field("event_time", "raw.timestamp", "timestamp", json="timestamp"), Field("host", "raw.host", "string"),
                Field("cpu_percent", "raw.metrics.cpu_percent", "double"),
                Field("memory_percent", "raw.metrics.memory_percent", "double"),
                Field("disk_percent", "raw.metrics.disk_percent", "double"),
                Field("response_time_ms", "raw.metrics.response_time_ms", "double")),
        key=("host", "event_time"),
        table="metrics",
    ),
}


def _known_sql(struct: StructType) -> str:
    return "array(" + ", ".join(f"'{f.name}'" for f in struct.fields if f.name != CORRUPT) + ")"


def _unknown(map_sql: str, struct: StructType) -> str:
    """The entries of the map ``map_sql`` (name -> variant) that ``struct`` has no field for."""
    return f"map_filter({map_sql}, (k, v) -> NOT array_contains({_known_sql(struct)}, k))"


def _is_object_array(typ) -> bool:
    return isinstance(typ, ArrayType) and isinstance(typ.elementType, StructType)


def _object_array(f: StructField) -> str:
    return f"try_variant_get(fields['{f.name}'], '$', 'array<map<string,variant>>')"


def _convert(source: str, typ: str) -> Column:
    if typ == "string":
        return F.expr(source)
    if typ == "timestamp":
        return F.expr(f"try_to_timestamp({source})")
    return F.expr(f"try_cast({source} AS {typ})")


def _field_checks(fields, prefix: str = "") -> list[tuple[Column, str]]:
    """(condition, reason) pairs for missing and wrongly typed fields, in a fixed order."""
    checks = []
    for f in fields:
        if f.required:
            checks.append((F.expr(f"{f.source} IS NULL"), f"missing_field:{prefix}{f.label}"))
    for f in fields:
        if f.type != "string":
            reason = "bad_timestamp" if f.type == "timestamp" else f"wrong_type:{prefix}{f.label}"
            checks.append((F.expr(f"{f.source} IS NOT NULL") & _convert(f.source, f.type).isNull(), reason))
    return checks


def _item_checks() -> list[tuple[Column, str]]:
    checks = [(F.expr("raw.items IS NULL"), "missing_field:items")]
    for f in ITEM_FIELDS:
        checks.append((F.expr(f"exists(raw.items, x -> x.{f.name} IS NULL)"), f"missing_field:items.{f.name}"))
    for f in ITEM_FIELDS:
        if f.type != "string":
            checks.append((F.expr(f"exists(raw.items, x -> x.{f.name} IS NOT NULL AND "
                                  f"try_cast(x.{f.name} AS {f.type}) IS NULL)"), f"wrong_type:items.{f.name}"))
    return checks


def _typed_items() -> Column:
    parts = ", ".join(f"'{f.name}', " + (f"x.{f.name}" if f.type == "string" else f"try_cast(x.{f.name} AS {f.type})")
                      for f in ITEM_FIELDS)
    return F.expr(f"transform(raw.items, (x, i) -> named_struct({parts}, "
                  f"'{RESCUED}', element_at(rescued_items, i + 1)))")  # per item (ParseSpec.rescued)


def _first_match(checks: list[tuple[Column, str]]) -> Column:
    expr = None
    for cond, reason in checks:
        expr = (F.when(cond, F.lit(reason)) if expr is None else expr.when(cond, F.lit(reason)))
    return expr.otherwise(F.lit(None).cast("string"))


def classify(bronze: DataFrame, kind: str, max_ahead_seconds: float) -> DataFrame:
    """Bronze rows -> typed rows with ``route`` and ``reason`` (and one ``rule_<name>`` flag per rule)."""
    spec = KINDS[kind]
    rules = record_rules(kind)
    text = F.col("value").cast("string")
    df = bronze.select(
        "key", "value", "topic", "partition", "offset", F.col("timestamp").alias("kafka_timestamp"),
        F.from_json(text, spec.raw, {"mode": "PERMISSIVE"}).alias("raw"),
        F.from_json(text, "map<string,variant>").alias("fields"))  # for the fields the schema does not know
    checks = [(F.col("value").isNull(), "empty_value"),
              (F.col("raw").isNull() | F.col(f"raw.{CORRUPT}").isNotNull(), "malformed_json")]
    checks += _field_checks(spec.fields)
    typed = [_convert(f.source, f.type).alias(f.name) for f in spec.fields]
    df = df.select("*", *spec.unknown()).select("*", *spec.rescued())
    if kind == "orders":
        checks += _item_checks()
        typed += [_typed_items().alias("items")]
    ahead = F.col("event_time").cast("double") - F.col("kafka_timestamp").cast("double")
    df = df.select("*", *typed)
    df = df.withColumn("parse_error", _first_match(checks + [(ahead > F.lit(float(max_ahead_seconds)),
                                                              FUTURE_REASON)]))
    if kind == "orders":
        df = (df.withColumn("item_count", F.size("items"))
                .withColumn("items_total", F.expr("round(aggregate(items, 0D, (acc, x) -> acc + x.subtotal), 2)")))
    # rule flags: true when the (parsed) row breaks the rule
    for r in rules:
        df = df.withColumn(f"rule_{r.name}",
                           F.col("parse_error").isNull() & ~F.coalesce(F.expr(record_predicate(r)), F.lit(False)))
    quarantine_rules = [(F.col(f"rule_{r.name}"), r.name) for r in rules if r.action in ("quarantine", "fail")]
    drop_rules = [F.col(f"rule_{r.name}") for r in rules if r.action == "drop"]
    reason = F.coalesce(F.col("parse_error"), _first_match(quarantine_rules)) if quarantine_rules else F.col("parse_error")
    dropped = F.lit(False)
    for c in drop_rules:
        dropped = dropped | c
    route = F.when(reason.isNotNull(), "quarantine").when(dropped, "drop").otherwise("valid")
    return (df.withColumn("reason", reason).withColumn("route", route)
              .withColumn("target_table", F.lit(spec.table)).drop("raw", "parse_error", *spec.rescue_columns))


def dedup_columns(kind: str) -> tuple[str, ...]:
    """The natural key duplicates are recognised by (part of the query's checkpoint signature)."""
    return KINDS[kind].key


def clock_behind(delay: str, horizon: str | None) -> int:
    """Seconds a source's dedup clock runs behind the batch's time (``dedupe``)."""
    return int(interval_seconds(horizon or delay) - interval_seconds(delay))


def dedupe(classified: DataFrame, kind: str, delay: str, horizon: str | None = None,
           restored_ms: int = 0) -> DataFrame:
    """Drop duplicate valid records (same natural key) that reach silver within 2 x ``delay`` of
    processing after the first.

    The dedup operator's watermark follows the time each micro-batch runs (``wm_time``, Spark's
    batch timestamp, the same in a replay of the batch), not event time: the operator then
    never discards a record as behind its watermark (late data is the silver job's to judge, by
    event time, and to record), and an idle source cannot pin it (nor a far-future event time
    empty it). Quarantined and dropped rows keep a unique key (their Kafka coordinates), so the
    operator never discards them either.

    Silver dedupes its three sources in one query, and Spark evicts every operator's state by the
    query's one watermark (the greatest of theirs, ``multipleWatermarkPolicy=max``): unshifted, the
    source with the shortest delay would set it, and an order's key (delay 5 minutes) would go
    after 5 + 1 minutes, not 2 x 5. So each source's clock runs ``horizon - delay`` behind
    (``horizon``: the longest delay of the query's sources): every operator's watermark is then
    batch time - ``horizon``, and a key kept until ``first + delay`` falls behind it lives
    2 x ``delay`` of processing. That covers the event-time late check's reach (a copy is on time
    while its event time is within ``delay`` of the greatest one of the earlier batches), unless the
    pipeline's lag grew by more than ``delay`` between the first and the copy.

    Spark silently drops a row whose watermark column is behind the watermark it restored from
    the checkpoint (``restored_ms``): after a restart with a longer horizon (a longer delay
    configured, or a checkpoint from before the shift) a shifted clock could be. So no row's clock
    is at or behind ``restored_ms``: the watermark only grows from there, and a clock held up to
    it is soon ahead of it again.
    """
    key = dedup_columns(kind)
    valid = F.col("route") == "valid"
    natural = F.concat_ws("\u0001", *[F.col(k).cast("string") for k in key])
    coords = F.concat_ws(":", F.lit("coord"), "topic", "partition", "offset")
    behind = clock_behind(delay, horizon)
    if behind < 0:
        raise ValueError(f"dedup horizon {horizon!r} is shorter than the delay {delay!r} of {kind}")
    clock = F.current_timestamp() - F.make_dt_interval(secs=F.lit(behind))
    if restored_ms:
        clock = F.greatest(clock, F.timestamp_millis(F.lit(int(restored_ms) + 1)))
    keyed = (classified
             .withColumn("wm_time", clock)
             .withColumn("dedup_key", F.when(valid, natural).otherwise(coords)))
    if not keyed.isStreaming:  # batch backfill: the whole input is one "batch"
        return keyed.dropDuplicates(["dedup_key"])
    return keyed.withWatermark("wm_time", delay).dropDuplicatesWithinWatermark(["dedup_key"])


# The Columns of a micro-batch's outputs are built once per process and reused by every batch
# (``functools.cache``): each new Column is several py4j round trips, and a silver micro-batch made
# ~2,100 round trips per batch: 0.6-0.7 s of its ~5 s on the 2-core bench machine. A Column is an unresolved
# expression: valid for any DataFrame and session of the process.
@functools.cache
def _coords() -> tuple[Column, ...]:
    return tuple(F.col(c) for c in COORDINATES)


@functools.cache
def _table_columns(kind: str) -> tuple[Column, ...]:
    if kind == "orders":
        named = [F.col(c) for c in ("order_id", "customer_id", "event_time", "total", "status")]
        named.append(F.col("item_count").cast("int").alias("item_count"))
    else:
        named = [F.col(f.name) for f in KINDS[kind].fields]
    return (*named, F.col(RESCUED), *_coords())


@functools.cache
def _item_columns() -> tuple[tuple[Column, ...], tuple[Column, ...]]:
    head = tuple(F.col(c) for c in ("order_id", "customer_id", "event_time"))
    exploded = (*head, *_coords(), F.posexplode("items").alias("pos", "item"))
    line = (F.col("order_id"), (F.col("pos") + 1).alias("line"), F.col("customer_id"), F.col("event_time"),
            *[F.col(f"item.{f.name}").alias(f.name) for f in ITEM_FIELDS], F.col(f"item.{RESCUED}").alias(RESCUED),
            *_coords())
    return exploded, line


@functools.cache
def _quarantine_columns() -> tuple[Column, ...]:
    return (F.col("key"), F.col("value"), *_coords(), F.col("target_table"), F.col("reason"),
            F.current_timestamp().alias("quarantined_at"))


@functools.cache
def route_is(route: str) -> Column:
    return F.col("route") == route


def to_order_items(valid: DataFrame) -> DataFrame:
    exploded, line = _item_columns()
    return valid.select(*exploded).select(*line)


def to_table(valid: DataFrame, kind: str) -> DataFrame:
    return valid.select(*_table_columns(kind))


def promote(valid: DataFrame, kind: str, names: tuple[str, ...]) -> DataFrame:
    """``to_table`` of a source whose table gained a string column per top-level field of
    ``names`` (schema evolution, ``addNewColumns``): each taken from the payload as sent (a string
    as is, anything else as JSON), and no longer in ``_rescued_data``."""
    known = "array(" + ", ".join(f"'{n}'" for n in names) + ")"
    kept = f"map_filter(from_json({RESCUED}, 'map<string,variant>'), (k, v) -> NOT array_contains({known}, k))"
    rows = (valid.withColumn("_fields", F.from_json(F.col("value").cast("string"), "map<string,variant>"))
                 .withColumn(RESCUED, F.expr(f"CASE WHEN cardinality({kept}) > 0 THEN to_json({kept}) END")))
    return rows.select(*_table_columns(kind),
                       *[F.expr(f"try_variant_get(_fields['{n}'], '$', 'string')").alias(n) for n in names])


def to_quarantine(rows: DataFrame) -> DataFrame:
    return rows.select(*_quarantine_columns())


def to_late(rows: DataFrame, watermark_ms: int, delay_seconds: float, dropped_by: str) -> DataFrame:
    """Late-ledger rows for valid records ``dropped_by`` an operator's watermark ``watermark_ms``:
    the raw record, its coordinates, the watermark it missed and by how much, and how long after
    its event time it reached Kafka (arrival lag, an operational signal, not the rule)."""
    watermark = F.timestamp_micros(F.lit(int(watermark_ms) * 1000))
    return rows.select("key", "value", *_coords(), "event_time", "target_table",
                       (watermark.cast("double") - F.col("event_time").cast("double")).alias("lateness_seconds"),
                       F.lit(float(delay_seconds)).alias("watermark_delay_seconds"),
                       watermark.alias("watermark"), F.lit(dropped_by).alias("dropped_by"),
                       (F.col("kafka_timestamp").cast("double") - F.col("event_time").cast("double"))
                       .alias("arrival_lag_seconds"),
                       F.current_timestamp().alias("recorded_at"))


ROUTES = ("valid", "quarantine", "drop", "late")  # late: decided by the silver job's event clock, not by classify


def outcome_columns(kinds) -> tuple[Column, ...]:
    """Aggregates over classified rows of the sources ``kinds``: rows checked, rows breaking each
    rule, rows per route. Grouped by source, one Spark job counts a whole micro-batch."""
    return _outcome_columns(tuple({r.name: None for kind in kinds for r in record_rules(kind)}))


@functools.cache  # keyed by the rules' names: a rule added or removed gets its own Columns
def _outcome_columns(rules: tuple[str, ...]) -> tuple[Column, ...]:
    aggs = [F.count("route").alias("checked")]
    aggs += [F.sum(F.col(f"rule_{name}").cast("long")).alias(f"r_{name}") for name in rules]
    aggs += [F.sum(route_is(x).cast("long")).alias(f"route_{x}") for x in ROUTES]
    return tuple(aggs)


@functools.cache
def drift_columns() -> tuple[Column, ...]:
    """Aggregates over classified rows (beside ``outcome_columns``): what the schema did not expect."""
    missing = F.col("reason").startswith("missing_field:")
    return (F.count("rescued_fields").alias("rescued"),
            F.array_sort(F.array_distinct(F.flatten(F.collect_set("rescued_fields")))).alias("rescued_names"),
            F.collect_set(F.when(missing, F.col("reason"))).alias("missing_reasons"),
            F.count(F.when(missing, 1)).alias("missing"))


@dataclass(frozen=True)
class Drift:
    """One batch's schema drift in one source: ``rescued`` records had fields the schema does not
    know (``unknown``: their paths, ``metrics.gpu_percent``); ``gone``: the fields every record of
    the batch lacked (each of them quarantined as ``missing_field:<field>``)."""

    rescued: int
    unknown: tuple[str, ...]
    gone: tuple[str, ...]

    @classmethod
    def of(cls, row) -> "Drift":
        """From a row of ``drift_columns`` and ``outcome_columns`` (``checked``)."""
        reasons = sorted(row["missing_reasons"] or ())
        checked, missing = int(row["checked"] or 0), int(row["missing"] or 0)
        gone = tuple(r.split(":", 1)[1] for r in reasons) if checked and missing == checked and len(reasons) == 1 else ()
        return cls(int(row["rescued"] or 0), tuple(row["rescued_names"] or ()), gone)

    def __bool__(self) -> bool:
        return bool(self.rescued or self.gone)

    def as_json(self) -> dict:
        return {"rescued": self.rescued, "unknown_fields": list(self.unknown), "gone_fields": list(self.gone)}


def outcomes(row, kind: str) -> list[tuple]:
    """``(table, rule, action, failed, checked)`` per rule and per route, from one row of
    ``outcome_columns``."""
    checked = int(row["checked"] or 0)
    out = [(r.table, r.name, r.action, int(row[f"r_{r.name}"] or 0), checked) for r in record_rules(kind)]
    out += [(KINDS[kind].table, f"route:{x}", "count", int(row[f"route_{x}"] or 0), checked) for x in ROUTES]
    return out


def rule_outcomes(classified: DataFrame, kind: str) -> list[tuple]:
    """``outcomes`` of a DataFrame of one source's classified rows (one Spark job)."""
    return outcomes(classified.agg(*outcome_columns([kind])).collect()[0], kind)
