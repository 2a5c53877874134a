"""delta-rs (the ``deltalake`` package) on the lake's object store: its storage options and
addresses, and the writes the pipeline makes through it: ``replace`` for the small tables a query
replaces at every micro-batch (gold's open KPI windows), ``read`` and ``columns`` of them at a
run's start, and ``vacuum`` of their replaced files; ``append`` and ``compact`` for the event log.
Every table keeps a single writer: the query that writes it, through Delta-Spark or, for a
replaced table, through ``replace``; an event-log table, its application's log (``append``,
``compact``). The Spark-free reader of the lake is ``serving.native``."""

from __future__ import annotations

from common.errors import SettingsError
from common.settings import Settings, s3_location


def storage_options(settings: Settings, path: str) -> dict[str, str]:
    """delta-rs's object-store options for the table at ``path`` (empty for a local path), with the
    key the process holds for its bucket (``Settings.s3_key_for``)."""
    if not settings.is_s3:
        return {}
    key = settings.s3_key_for(s3_location(path)[0])
    if key is None:
        raise SettingsError(f"this command's S3 roles ({', '.join(settings.roles)}) have no key for {path}")
    return {"AWS_ENDPOINT_URL": settings.s3_endpoint.rstrip("/"), "AWS_ACCESS_KEY_ID": key[0],
            "AWS_SECRET_ACCESS_KEY": key[1], "AWS_REGION": settings.s3_region,
            "AWS_ALLOW_HTTP": str(settings.s3_endpoint.startswith("http://")).lower(),
            "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": str(not settings.s3_path_style).lower()}


def uri(path: str) -> str:
    """delta-rs's address of a table Spark addresses as ``path`` (``s3a://`` -> ``s3://``)."""
    return "s3://" + path[len("s3a://"):] if path.startswith("s3a://") else path


def replace(rows, path: str, settings: Settings, tag: str, txn: tuple[str, int] | None = None) -> None:
    """Replace every row of the Delta table at ``path`` by ``rows`` (a ``pyarrow.Table``, on the
    driver), in one commit whose ``userMetadata`` is ``tag`` (``tables.commit_tag``; with ``txn``,
    also Delta's txnAppId/txnVersion). This is for small tables (gold's open windows, a few rows
    per window and group), and delta-rs writes it.

    Why not Delta-Spark's overwrite: it lists the table's files first, a state reconstruction (3
    Spark jobs with AQE) at every commit: 1.0 s per commit alone, 6-8 s inside a loaded
    ``gold_kpis`` batch (six tables at once), against 0.4 s for an append; delta-rs replays the
    log natively, 0.1 s with the collect (``bench/README.md``, 2026-12-04). The commit goes to S3
    with a conditional put (If-None-Match: S3 and MinIO), so it can never overwrite another
    commit; a table written this way must not also be written by Delta-Spark while its query runs
    (one writer per table, as everywhere in the lake)."""
    import pyarrow as pa
    from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

    table = DeltaTable(uri(path), storage_options=_writer_options(settings, path))
    rows = rows.cast(pa.schema(table.schema().to_arrow()))  # the table's types and NOT NULLs
    write_deltalake(table, rows, mode="overwrite", commit_properties=CommitProperties(
        custom_metadata={"userMetadata": tag},
        app_transactions=[Transaction(app_id=txn[0], version=txn[1])] if txn else None))


def append(rows, path: str, settings: Settings) -> None:
    """Append ``rows`` (a ``pyarrow.Table``) to the Delta table at ``path`` in one commit, the table
    made with their schema if it does not exist, a column it lacks added (schema merge): for the
    few rows of a log (``common.eventlog``), which Delta-Spark appended with a Spark job each."""
    from deltalake import write_deltalake

    write_deltalake(uri(path), rows, mode="append", schema_mode="merge",
                    storage_options=_writer_options(settings, path))


def compact(path: str, settings: Settings) -> None:
    """Rewrite the small files of the table at ``path`` into larger ones (delta-rs's OPTIMIZE, its
    commit ``dataChange=false``): for the tables ``append`` writes, by their one writer."""
    from deltalake import DeltaTable

    DeltaTable(uri(path), storage_options=_writer_options(settings, path)).optimize.compact()


def read(path: str, settings: Settings):
    """(latest version, every row) of the small table at ``path`` (the rows a ``pyarrow.Table``),
    read by delta-rs: for the tables ``replace`` writes. Delta-Spark's snapshot of one costs a state
    reconstruction (a Spark job: delta-rs writes no ``.crc``), 0.25 s here, 2.6 s the first time in
    a JVM, and a scan of it ~1.7 s inside a loaded batch."""
    from deltalake import DeltaTable

    table = DeltaTable(uri(path), storage_options=storage_options(settings, path))
    return table.version(), table.to_pyarrow_table()


def columns(paths: list[str], settings: Settings) -> dict[str, set[str] | None]:
    """Path -> the column names of the Delta table there as delta-rs reads its log (None: no
    table), the tables read side by side: for ``replace``'s tables, which Delta-Spark would check
    with a Spark job each (no ``.crc``)."""
    from concurrent.futures import ThreadPoolExecutor

    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    def one(path: str) -> set[str] | None:
        try:
            table = DeltaTable(uri(path), storage_options=storage_options(settings, path))
        except TableNotFoundError:
            return None
        return {f.name for f in table.schema().fields}

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(paths)))) as pool:
        return dict(zip(paths, pool.map(one, paths)))


def vacuum(path: str, settings: Settings, retention_hours: int = 1) -> int:
    """Delete the files of the table at ``path`` that no version of the last ``retention_hours``
    references (a replaced table's old rows); returns how many files its tombstones name (one
    deleted before counts again: deleting it twice is harmless). For tables written by
    ``replace``: they are not read by time travel, and a reader's snapshot lives seconds."""
    from deltalake import DeltaTable

    table = DeltaTable(uri(path), storage_options=_writer_options(settings, path))
    return len(table.vacuum(retention_hours=retention_hours, enforce_retention_duration=False, dry_run=False))


def _writer_options(settings: Settings, path: str) -> dict[str, str]:
    # commits with If-None-Match (S3, MinIO): delta-rs refuses S3 writes without a safe commit
    return dict(storage_options(settings, path), conditional_put="etag") if settings.is_s3 else {}
