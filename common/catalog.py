"""Make the lake's Delta tables addressable as ``<layer>.<table>`` in Spark SQL.

The lake itself is the source of truth: at session start every Delta table found under
``<lake_root>/<layer>/`` is registered (``CREATE TABLE IF NOT EXISTS ... USING DELTA
LOCATION``) in database ``<layer>``. Registration only records a path, so it is cheap and
any number of sessions can do it at once without a shared metastore lock.
"""

from __future__ import annotations

from common.settings import LAYERS, Settings


def list_tables(spark, settings: Settings) -> dict[str, list[str]]:
    """{layer: [table, ...]} of the Delta tables present under the lake root."""
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    found: dict[str, list[str]] = {}
    for layer in LAYERS:
        root = jvm.org.apache.hadoop.fs.Path(f"{settings.lake_root.rstrip('/')}/{layer}")
        fs = root.getFileSystem(conf)
        names = []
        if fs.exists(root):
            for status in fs.listStatus(root):
                if status.isDirectory() and fs.exists(jvm.org.apache.hadoop.fs.Path(status.getPath(), "_delta_log")):
                    names.append(status.getPath().getName())
        found[layer] = sorted(names)
    return found


def register_tables(spark, settings: Settings) -> dict[str, list[str]]:
    """Register every Delta table of the lake; a name already pointing elsewhere (another lake
    root used by the same session) is re-pointed. Only metadata changes: the tables are external."""
    registered: dict[str, str] = spark.__dict__.setdefault("_lakehouse_tables", {})
    tables = list_tables(spark, settings)
    for layer, names in tables.items():
        spark.sql(f"CREATE DATABASE IF NOT EXISTS {layer}")
        for name in names:
            full, path = f"{layer}.{name}", settings.table_path(layer, name)
            if registered.get(full) not in (None, path):
                spark.sql(f"DROP TABLE IF EXISTS {full}")
            spark.sql(f"CREATE TABLE IF NOT EXISTS {full} USING DELTA LOCATION '{path}'")
            registered[full] = path
    return tables
