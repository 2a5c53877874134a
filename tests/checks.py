"""What every end-to-end and fault test asserts, against the generator's ledger as truth:
bronze holds every Kafka offset exactly once, silver equals the plain-Python recomputation
(no duplicate key), and every gold table equals its recomputation to the cent."""

from __future__ import annotations

import pytest

from gold.transforms import KPIS, OPEN_SUFFIX
from tests.oracle import GoldOracle, SilverOracle

HALF_CENT = 0.005 + 1e-9  # gold rounds to the cent; the oracle is exact


def _bronze(spark, settings, topic):
    return spark.read.format("delta").load(settings.table_path("bronze", settings.bronze_table_for(topic)))


def _coords(spark, settings):
    """(topic, partition, offset) -> (key, value) of every bronze row, as any Delta reader finds
    them (delta-rs: no Spark job, no row crossing py4j - a Spark collect of the binary columns was
    ~45 % of these checks' time in the suite's profile); a coordinate twice fails."""
    from serving.native import NativeLake

    lake = NativeLake(settings)
    out = {}
    for topic in settings.source_topics:
        table = lake.table(f"bronze.{settings.bronze_table_for(topic)}")
        assert table is not None, f"no bronze table for {topic}"
        for r in table.to_pyarrow_table(columns=["topic", "partition", "offset", "key", "value"]).to_pylist():
            k = (r["topic"], r["partition"], r["offset"])
            assert k not in out, f"duplicate coordinates {k}"
            out[k] = (r["key"], r["value"])
    return out


def _ledger_coords(ledger):
    return {(r["topic"], r["partition"], r["offset"]):
            (r["key"].encode() if r["key"] is not None else None, r["value"].encode()) for r in ledger}


def _table(spark, settings, name):
    return spark.read.format("delta").load(settings.table_path("silver", name))


def _rows(settings, name: str, columns=None) -> list:
    """The rows of Delta table ``name`` (``layer.table``) as any Delta reader finds them (delta-rs:
    no Spark job, ~10x cheaper than a Spark read of a small table here), each with its columns as
    attributes; a timestamp column as microseconds since the epoch."""
    from types import SimpleNamespace

    import pyarrow as pa

    from serving.native import NativeLake

    table = NativeLake(settings).table(name)
    assert table is not None, f"no Delta table {name}"
    data = table.to_pyarrow_table(columns=list(columns) if columns else None)
    for i, field in enumerate(data.schema):
        if pa.types.is_timestamp(field.type):
            data = data.set_column(i, field.name, data.column(i).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()))
    return [SimpleNamespace(**r) for r in data.to_pylist()]


def _count(settings, name: str) -> int:
    from serving.native import NativeLake

    table = NativeLake(settings).table(name)
    assert table is not None, f"no Delta table {name}"
    return table.to_pyarrow_dataset().count_rows()  # from the data files' Parquet footers


def _bronze_count(spark, settings, topic):
    return _count(settings, f"bronze.{settings.bronze_table_for(topic)}")


# silver tables whose rows carry the Kafka coordinates of the record they came from (order_items:
# an order's lines, with the order's coordinates)
SILVER_ROW_TABLES = ("orders", "logs", "metrics", "quarantine", "late_records")
_LOG_SCHEMA = ("commitInfo STRUCT<operation: STRING, userMetadata: STRING>, "
               "add STRUCT<path: STRING, dataChange: BOOLEAN>, remove STRUCT<path: STRING, dataChange: BOOLEAN>")
_COORD_SCHEMA = "topic STRING, partition INT, offset BIGINT"


def _commit_batch(user_metadata: str | None) -> tuple[str, int] | None:
    """(run, batch id) of a micro-batch commit, from its tag (``common.tables.commit_tag``:
    ``{"batch": 7, "writer": "silver:<query id>:orders"}``); the run is the writer without its table
    (one per checkpoint). None for an untagged commit."""
    import json

    try:
        tag = json.loads(user_metadata or "")
    except ValueError:
        return None
    if not isinstance(tag, dict):
        return None
    writer, batch = tag.get("writer"), tag.get("batch")
    if not isinstance(writer, str) or writer.count(":") < 2 or not isinstance(batch, int) or isinstance(batch, bool):
        return None
    return writer.rsplit(":", 1)[0], batch


def _delta_commits(spark, roots: dict[str, str]) -> dict[str, list[dict]]:
    """table -> its commits in version order (``version``, ``operation``, ``batch``: the tag's (run,
    batch) or None, ``add`` / ``remove``: [(path as in the log, dataChange)]), from the JSON
    commit files of every table's ``_delta_log`` in one read. Every version from 0 on must be there."""
    import re
    from urllib.parse import unquote

    from pyspark.sql import functions as F

    table_of = {root.rsplit("/", 1)[-1]: table for table, root in roots.items()}
    assert len(table_of) == len(roots), f"two silver tables end in the same folder name: {roots}"
    rows = (spark.read.schema(_LOG_SCHEMA).option("pathGlobFilter", "*.json")
            .json([f"{root}/_delta_log" for root in roots.values()])
            .select(F.col("_metadata.file_path").alias("file"), F.col("commitInfo.operation").alias("operation"),
                    F.col("commitInfo.userMetadata").alias("tag"), F.col("add.path").alias("add"),
                    F.col("add.dataChange").alias("add_change"), F.col("remove.path").alias("remove"),
                    F.col("remove.dataChange").alias("remove_change"))
            .collect())
    commits: dict[str, dict[int, dict]] = {table: {} for table in roots}
    for r in rows:  # one row per action (metaData and protocol ones: all null here)
        folder, _, name = unquote(r.file).rpartition("/_delta_log/")
        m = re.fullmatch(r"(\d+)\.json", name)
        if not m:  # e.g. a log compaction (<from>.<to>.compacted.json): the commits themselves are enough
            continue
        table = table_of[folder.rsplit("/", 1)[-1]]
        version = int(m.group(1))
        c = commits[table].setdefault(version, {"version": version, "operation": None, "batch": None,
                                                "add": [], "remove": []})
        if r.operation is not None:
            c["operation"], c["batch"] = r.operation, _commit_batch(r.tag)
        if r.add is not None:
            c["add"].append((r.add, r.add_change))
        if r.remove is not None:
            c["remove"].append((r.remove, r.remove_change))
    for table, by_version in commits.items():
        assert sorted(by_version) == list(range(len(by_version))) and by_version, (
            f"silver.{table}: commit files of versions {sorted(by_version)[:3]}... in {roots[table]}/_delta_log, not "
            "every version from 0 (log files cleaned up?): its micro-batches cannot be told")
    return {table: [by_version[v] for v in sorted(by_version)] for table, by_version in commits.items()}


def _live_batch_files(table: str, commits: list[dict]) -> dict[str, tuple[str, int]]:
    """The data files a micro-batch commit added whose rows the table still holds (path as in the
    log -> (run, batch)). A commit that only rearranges files (OPTIMIZE: ``dataChange`` false on every
    action) moves the rows of the files it removes into the files it adds, so a batch file that
    was compacted still counts (its rows are read from it: without VACUUM it is still on storage).
    Any other removal drops the rows (``lakehouse refresh``'s DELETE); any other commit that adds
    files without a batch tag is an error (those rows have no batch)."""
    origin: dict[str, tuple[str, int]] = {}   # batch file -> (run, batch)
    live: dict[str, frozenset[str]] = {}      # file in the table now -> the batch files whose rows it holds
    for c in commits:
        actions = c["add"] + c["remove"]
        where = f"silver.{table} version {c['version']} ({c['operation']})"
        if actions and (c["operation"] == "OPTIMIZE" or not any(change for _, change in actions)):
            held: set[str] = set()
            for path, _ in c["remove"]:
                assert path in live, f"{where} rearranges {path}, which the table did not hold"
                held |= live.pop(path)
            for path, _ in c["add"]:  # a file committed again as it is (a row-tracking backfill) keeps its rows
                live[path] = frozenset(held) | live.get(path, frozenset())
            continue
        for path, _ in c["remove"]:
            assert live.pop(path, None) is not None, f"{where} removes {path}, which the table did not hold"
        if c["add"]:
            assert c["batch"] is not None, f"{where} adds rows outside any tagged micro-batch commit"
            for path, _ in c["add"]:
                origin[path] = c["batch"]
                live[path] = frozenset((path,))
    return {path: origin[path] for held in live.values() for path in held}


def silver_batch_of(spark, settings, tables=SILVER_ROW_TABLES) -> dict[tuple, tuple[str, int]]:
    """Kafka coordinates (topic, partition, offset) of every row of the silver ``tables`` -> the
    micro-batch that wrote it, as (run, batch id): a run is one silver checkpoint (``silver:<query
    id>``; its batch ids start at 0, its event clock empty). Found from the lake alone, not from
    silver's own watermark files: every micro-batch commit is tagged with its batch
    (``commitInfo.userMetadata``, ``batches.BatchContext``), so each data file a tagged commit added
    belongs to that batch (``_live_batch_files``, through compactions); the rows of those files are
    read in one Spark read (the files themselves, compacted or not), and their count must be the
    table's, so the map covers exactly the rows the table holds. Whatever the number of batches: one
    read of the tables' commit files, one of their batch files, and a row count per table."""
    import re
    from urllib.parse import unquote

    from pyspark.sql import functions as F

    roots = {t: settings.table_path("silver", t).rstrip("/") for t in tables}
    commits = _delta_commits(spark, roots)
    files: dict[str, tuple[str, str, tuple[str, int]]] = {}  # file name -> (table, full path, (run, batch))
    for table in tables:
        for rel, batch in _live_batch_files(table, commits[table]).items():
            path = unquote(rel)  # paths in the log are URL-encoded, relative to the table's folder
            full = path if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:|/", rel) else f"{roots[table]}/{path}"
            name = path.rsplit("/", 1)[-1]
            assert name not in files, f"data file {name} named by two silver commits ({files[name][0]}, {table})"
            files[name] = (table, full, batch)
    out: dict[tuple, tuple[str, int]] = {}
    rows_of = {table: 0 for table in tables}
    if files:
        rows = (spark.read.schema(_COORD_SCHEMA).parquet(*[full for _, full, _ in files.values()])
                .select("topic", "partition", "offset", F.col("_metadata.file_path").alias("file")).collect())
        for r in rows:
            table, _, batch = files[unquote(r.file).rsplit("/", 1)[-1]]
            c = (r.topic, r.partition, r.offset)
            assert None not in c, f"silver.{table}: a row without Kafka coordinates in {r.file}"
            rows_of[table] += 1
            first = out.setdefault(c, batch)
            assert first == batch, f"{c} written by two micro-batches: {first} and {batch} ({table})"
    for table in tables:
        n = _count(settings, f"silver.{table}")
        assert rows_of[table] == n, (f"silver.{table} holds {n} rows, its micro-batch commits' files "
                                     f"{rows_of[table]}: the commit log does not account for its rows")
    return out


def check_late(spark, settings, ledger) -> set[tuple]:
    """silver.late_records is exactly what silver's rule gives for the micro-batches it ran, both
    ways: no late record missing (a silver marking nothing late fails), none on time (nor marking
    too much). The batch boundaries are not deterministic, so they are read from the lake
    (``silver_batch_of``: which batch wrote each record); lateness is then recomputed from the
    ledger's event times alone (``tests.oracle.replay_lateness``: each batch judged by the watermark
    the batches before it left). Each late row also records the watermark the replay gives its
    batch, its event time (the ledger's) at or behind it, and is a record the generator sent late
    (or a copy of an order re-sent after the watermark passed it). Returns the late coordinates
    (the input of ``SilverOracle``)."""
    from common.settings import interval_seconds
    from tests.oracle import coords, iso_micros, late_mismatch, replay_lateness

    rows = _rows(settings, "silver.late_records", ("topic", "partition", "offset", "event_time", "watermark"))
    late = {(r.topic, r.partition, r.offset): r for r in rows}
    assert len(late) == len(rows), "a record twice in silver.late_records"
    kind_of = {src.topic: src.kind for src in settings.sources}
    delays = {src.kind: interval_seconds(src.watermark) for src in settings.sources}
    batch_of = silver_batch_of(spark, settings, ("orders", "logs", "metrics", "late_records"))
    sent = {coords(rec): rec for rec in ledger}
    unknown = sorted(set(batch_of) - set(sent))
    assert not unknown, f"silver holds {len(unknown)} records the ledger does not (e.g. {unknown[:3]}): cannot replay"
    replay = replay_lateness(ledger, batch_of, kind_of, delays)
    recorded_ms = {c: r.watermark // 1000 for c, r in late.items()}
    problem = late_mismatch(replay, set(late), recorded_ms)
    assert not problem, problem
    for c, row in late.items():
        rec = sent[c]
        # a generator's late record, or a copy of an order re-sent after the watermark passed it
        assert rec["fault"] in ("late", "duplicate"), f"{c} ({rec['fault']}) is in silver.late_records"
        assert row.event_time == replay.event_us[c], f"{c}: silver's event time is not the ledger's"
        assert row.event_time <= row.watermark, f"{c}: event time after the watermark it missed"
        want = replay.watermark_of(c)
        assert want is not None and row.watermark == want * 1000, (
            f"{c}: silver recorded the watermark {iso_micros(row.watermark)} for batch {replay.batch[c]}, the "
            f"replay of the batches before it gives {'none' if want is None else iso_micros(want * 1000)}")
    return set(late)


def check_silver_against_ledger(spark, settings, ledger, late: set[tuple] | None = None):
    """silver against the ledger's oracle; ``late``: ``check_late``'s result when the caller has
    it already (it is checked here otherwise)."""
    oracle = SilverOracle(ledger, settings, check_late(spark, settings, ledger) if late is None else late)
    orders = _rows(settings, "silver.orders", ("order_id", "total", "customer_id"))
    order_ids = [r.order_id for r in orders]
    assert len(order_ids) == len(set(order_ids)), "duplicate order in silver.orders"
    assert set(order_ids) == set(oracle.valid_orders())
    for r in orders:
        o = oracle.valid_orders()[r.order_id]
        assert (r.total, r.customer_id) == (o["total"], o["customer_id"])
    rows = _rows(settings, "silver.order_items", ("order_id", "line", "product_id", "quantity", "subtotal"))
    items = {(r.order_id, r.line, r.product_id, r.quantity, round(r.subtotal, 2)) for r in rows}
    assert items == oracle.items()
    assert len(rows) == len(oracle.items())

    q = {(r.topic, r.partition, r.offset): r.reason
         for r in _rows(settings, "silver.quarantine", ("topic", "partition", "offset", "reason"))}
    assert q == oracle.quarantine()
    late = oracle.late()

    # accounting identity, per source: bronze = silver + quarantine + duplicates dropped + late
    for kind, topic, table in (("orders", settings.topic_orders, "orders"), ("logs", settings.topic_logs, "logs"),
                               ("metrics", settings.topic_metrics, "metrics")):
        silver_n = len(orders) if table == "orders" else _count(settings, f"silver.{table}")
        assert silver_n == oracle.valid_count(kind), (kind, silver_n, oracle.valid_count(kind))
        q_n = sum(1 for c in q if c[0] == topic)
        late_n = sum(1 for c in late if c[0] == topic)
        assert _bronze_count(spark, settings, topic) == silver_n + q_n + oracle.duplicates(kind) + late_n
    # rule outcomes were recorded per batch, and they add up to what was quarantined
    outcomes = _rows(settings, "silver.rule_outcomes", ("rule", "failed"))
    recorded = [r.failed for r in outcomes if r.rule == "route:quarantine"]
    assert recorded, "silver.rule_outcomes has no route:quarantine row"
    assert sum(recorded) == len(q)
    got = sum(r.failed for r in outcomes if r.rule == "route:late")
    assert got == len(late), f"rule_outcomes route:late {got} != {len(late)}"


def gold_rows(settings, name: str, kpi) -> dict:
    """The rows of Delta table ``gold/<name>`` as any Delta reader finds them (delta-rs, no Spark,
    no view): (window start, window end, *group) -> the notebook's measures; a key twice fails."""
    from serving.native import NativeLake

    table = NativeLake(settings).table(f"gold.{name}")
    assert table is not None, f"no Delta table gold/{name}"
    out = {}
    for r in table.to_pyarrow_table().to_pylist():
        key = (r["window_start"].strftime("%Y-%m-%d %H:%M:%S"), r["window_end"].strftime("%Y-%m-%d %H:%M:%S"),
               *(r[k] for k in kpi.keys))
        assert key not in out, f"gold/{name}: window/group {key} twice"
        out[key] = tuple(r[m] for m in kpi.columns)
    return out


def check_gold(spark, settings, ledger, late: set[tuple] | None = None):
    """Each KPI's folder holds one final row per window silver's watermark has passed, and its
    ``_open`` folder the other windows, each equal to the oracle's to the cent (``late``: as in
    ``check_silver_against_ledger``)."""
    late = check_late(spark, settings, ledger) if late is None else late
    oracle = GoldOracle(SilverOracle(ledger, settings, late), settings)
    for kpi in KPIS:
        for name, want in zip((kpi.name, kpi.name + OPEN_SUFFIX), oracle.split(kpi)):
            got = gold_rows(settings, name, kpi)
            assert set(got) == set(want), (f"gold/{name} (closed by {oracle.closed_by(kpi.source)}): windows "
                                           f"differ: missing {sorted(set(want) - set(got))[:3]}, extra "
                                           f"{sorted(set(got) - set(want))[:3]}")
            for k, expected in want.items():
                assert got[k] == pytest.approx(expected, abs=HALF_CENT), f"gold/{name} {k}: {got[k]} != {expected}"


def check_bronze(spark, settings, ledger):
    got = _coords(spark, settings)  # asserts no coordinates twice
    assert set(got) == set(_ledger_coords(ledger)), "bronze offsets differ from the ledger"


def check_pipeline(spark, settings, ledger):
    check_bronze(spark, settings, ledger)
    late = check_late(spark, settings, ledger)  # once: both layers' oracles start from it
    check_silver_against_ledger(spark, settings, ledger, late)
    check_gold(spark, settings, ledger, late)


def check_checkpoint_sources(spark, settings) -> None:
    """Every query's checkpoint holds one source per source the graph declares for it: Spark
    refuses to restart a checkpoint whose query reads a different number of sources (a second
    read of one table is a second source), so a change here would break every existing lake."""
    from common.fs import Fs
    from app.dataflow import graph

    fs = Fs(spark)
    for flow in graph(settings):
        text = fs.read_text(f"{flow.checkpoint}/offsets/0")
        assert text is not None, f"{flow.name}: no offsets/0 in {flow.checkpoint}"
        lines = text.strip().splitlines()[2:]  # "v1", the batch metadata, then one line per source
        kafka = flow.topics_read  # one subscription to all its topics
        expected = len(flow.sources) - len(kafka) + (1 if kafka else 0)
        assert len(lines) == expected, f"{flow.name}: {len(lines)} sources in its checkpoint, graph says {expected}"


def check_published(spark, settings, aborted: bool | None = None) -> None:
    """A ``read_committed`` consumer of the enriched topic gets every order of
    ``gold.orders_enriched`` exactly once, keyed by its customer, and nothing else. ``aborted``:
    a ``read_uncommitted`` consumer also gets copies from aborted transactions (True: the crash
    under test left some; False: none)."""
    import json
    from collections import Counter

    from tests.helpers import read_topic

    table = {r.order_id: r.customer_id for r in spark.read.format("delta").load(
        settings.table_path("gold", "orders_enriched")).select("order_id", "customer_id").collect()}
    messages = read_topic(settings, settings.topic_enriched)
    seen = Counter(json.loads(m.value)["order_id"] for m in messages)
    twice = sorted(o for o, n in seen.items() if n > 1)
    assert not twice, f"published more than once: {twice[:5]} ({len(twice)} orders)"
    assert set(seen) == set(table), (f"published != gold.orders_enriched: missing {sorted(set(table) - set(seen))[:3]}, "
                                     f"extra {sorted(set(seen) - set(table))[:3]}")
    assert all(m.key.decode() == table[json.loads(m.value)["order_id"]] for m in messages)
    if aborted is not None:
        everything = read_topic(settings, settings.topic_enriched, committed=False)
        assert (len(everything) > len(messages)) == aborted, (len(everything), len(messages))
