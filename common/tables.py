"""Delta table helpers shared by the stages: create-if-missing, constraints, tagged micro-batch writes."""

from __future__ import annotations

import json
import logging
from typing import Iterable

from common.errors import SetupError

log = logging.getLogger("lakehouse.tables")


def is_delta_table(spark, path: str) -> bool:
    from delta.tables import DeltaTable

    return DeltaTable.isDeltaTable(spark, path)


def ensure_table(spark, path: str, empty_df, partition_by: Iterable[str] = (),
                 not_null: Iterable[str] = (), checks: dict[str, str] | None = None) -> None:
    """Create the Delta table at ``path`` with ``empty_df``'s schema (``not_null`` columns declared
    NOT NULL) if it does not exist yet; add the columns a table written by an earlier version
    lacks (nullable: its old rows read them as null); then make sure its CHECK constraints are in
    place."""
    from delta.tables import DeltaTable
    from pyspark.sql.types import StructField, StructType

    if not is_delta_table(spark, path):
        required = set(not_null)
        schema = StructType([StructField(f.name, f.dataType, f.nullable and f.name not in required)
                             for f in empty_df.schema.fields])
        try:
            (DeltaTable.createIfNotExists(spark).location(path).addColumns(schema)
             .partitionedBy(*partition_by).execute())
        except Exception as e:  # another process may have created it first
            if not is_delta_table(spark, path):
                raise SetupError(f"cannot create Delta table {path}: {str(e).splitlines()[0]}") from None
    else:
        have = {f.name for f in spark.read.format("delta").load(path).schema.fields}
        new = [f for f in empty_df.schema.fields if f.name not in have]
        if new:
            spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ("
                      + ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in new) + ")")
    existing = _constraints(spark, path) if checks else set()
    for name, predicate in (checks or {}).items():
        if name.lower() not in existing:
            spark.sql(f"ALTER TABLE delta.`{path}` ADD CONSTRAINT {name} CHECK ({predicate})")


def _constraints(spark, path: str) -> set[str]:
    props = spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").collect()
    return {r.key[len("delta.constraints."):].lower() for r in props if r.key.startswith("delta.constraints.")}


# How far back a restart looks for the batch its previous run was writing: that writer's last
# commit, possibly followed by a few maintenance commits (OPTIMIZE, VACUUM) - never 200 of them.
HISTORY_DEPTH = 200


def commit_tag(app_id: str, batch_id: int) -> str:
    """The ``userMetadata`` of a micro-batch's commit: which writer, which batch (shown by DESCRIBE HISTORY)."""
    return json.dumps({"writer": app_id, "batch": batch_id}, sort_keys=True)


def last_committed_batch(spark, path: str, app_id: str, depth: int = HISTORY_DEPTH) -> int:
    """The highest batch id ``app_id`` committed to the table, from the tags of its last ``depth``
    commits (-1 when none): the commit files only, no state reconstruction."""
    from delta.tables import DeltaTable

    last = -1
    rows = DeltaTable.forPath(spark, path).history(depth).select("userMetadata").collect()
    for row in rows:
        try:
            tag = json.loads(row.userMetadata or "")
        except ValueError:
            continue
        batch = tag.get("batch") if isinstance(tag, dict) and tag.get("writer") == app_id else None
        if isinstance(batch, int) and not isinstance(batch, bool):
            last = max(last, batch)
    if last < 0 and len(rows) >= depth:
        log.warning("%s: none of its last %d commits is from writer %s; if that writer committed before them, "
                    "a batch it replays now is written again", path, depth, app_id)
    return last


def append_batch(df, path: str, app_id: str, batch_id: int, txn: bool = False) -> None:
    """Append one micro-batch's rows in a commit tagged with (``app_id``, ``batch_id``). With ``txn``
    also Delta's txnAppId/txnVersion, which skips a batch that an earlier, txn-only version of the
    project committed; it costs a state reconstruction of the table (~0.7 s here), so only the
    first write of a run asks for it (see ``streams.BatchContext``)."""
    w = df.write.format("delta").mode("append").option("userMetadata", commit_tag(app_id, batch_id))
    if txn:
        w = w.option("txnAppId", app_id).option("txnVersion", str(batch_id))
    w.save(path)


def has_data(spark, path: str) -> bool:
    """The Delta table at ``path`` exists and holds at least one data file."""
    if not is_delta_table(spark, path):
        return False
    return int(spark.sql(f"DESCRIBE DETAIL delta.`{path}`").collect()[0].numFiles) > 0


def require_table(spark, path: str, what: str, hint: str) -> None:
    if not is_delta_table(spark, path):
        raise SetupError(f"{what} at {path} does not exist yet; {hint}")


def maintain(spark, path: str, vacuum_hours: float | None = None) -> dict[str, int]:
    """Compact a table's small files (OPTIMIZE) and, when ``vacuum_hours`` is given, delete files
    no version younger than that still needs (VACUUM). Returns files before/after.

    Hot streaming writes do not compact (no optimizeWrite/autoCompact: a shuffle and an OPTIMIZE
    check per commit cost more latency than they save); this is the scheduled pass (e.g. hourly
    OPTIMIZE, daily VACUUM), run by the table's writing application or while it is stopped."""
    def files() -> int:
        return int(spark.sql(f"DESCRIBE DETAIL delta.`{path}`").collect()[0].numFiles)

    before = files()
    spark.sql(f"OPTIMIZE delta.`{path}`")
    if vacuum_hours is not None:
        spark.sql(f"VACUUM delta.`{path}` RETAIN {vacuum_hours:g} HOURS")
    return {"files_before": before, "files_after": files()}
