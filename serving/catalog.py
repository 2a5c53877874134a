"""Make the lake's Delta tables addressable as ``<layer>.<table>`` in Spark SQL.

The lake itself is the source of truth: at session start every Delta table found under
``<lake_root>/<layer>/`` is registered (``CREATE TABLE IF NOT EXISTS ... USING DELTA
LOCATION``) in database ``<layer>``, under its folder's name, and each gold KPI gets the view
``gold.<kpi>_live`` (its final rows and its open windows, ``gold.transforms.live_sql``). Registration only
records a path, so it is cheap and any number of sessions can do it at once without a shared
metastore lock.
"""

from __future__ import annotations

import difflib
import logging
import re
from pathlib import Path

from common.settings import LAYERS, OPS, ZONES, Settings, s3_location

from common.eventlog import SELECT_LIST, VIEW, table_name
from common.pipeline import STAGES

# the lake root the session's table names point to (a SQL conf: the session's own state, in its UI)
ROOT_CONF = "spark.lakehouse.catalog.lakeRoot"

log = logging.getLogger("lakehouse.catalog")

# a commit or a checkpoint: a table whose first commit is still being written (its ``_delta_log/``
# folder exists, nothing in it yet) is not a table yet, and Spark refuses to register it
_LOG_ENTRY = re.compile(r"(^|/)\d{20}\.(json|checkpoint\b.*\.parquet)$")


def _committed(names) -> bool:
    return any(_LOG_ENTRY.search(n) for n in names)


def list_tables(settings: Settings) -> dict[str, list[str]]:
    """{layer: [table, ...]} of the Delta tables present under the lake root (no Spark needed)."""
    found: dict[str, list[str]] = {}
    if settings.is_s3:
        from common.clients import minio_client

        for layer in LAYERS + (OPS,):
            names = set()
            # a layer's tables are in its zone; ops tables in every zone (a stage's event log beside its
            # data); a zone none of the process's S3 roles may read is not listed (nor registered)
            roots: dict[str, str] = {}  # zone root -> zone (one root for every zone in the single layout)
            for zone in (layer,) if layer in LAYERS else ZONES:
                if settings.s3_role_for(zone) is not None:
                    roots.setdefault(settings.zone_root(zone), zone)
            for zone_root, zone in roots.items():
                bucket, root = s3_location(zone_root)
                client, prefix = minio_client(settings, bucket=bucket), f"{root}/{layer}/".lstrip("/")
                dirs = [o.object_name for o in client.list_objects(bucket, prefix=prefix) if o.is_dir]
                names.update(name for name, d in ((d[len(prefix):].strip("/"), d) for d in dirs)
                             if (len(roots) == 1 or settings.zone_of(layer, name) == zone) and _committed(
                                 o.object_name for o in client.list_objects(bucket, prefix=f"{d}_delta_log/")))
            found[layer] = sorted(names)
    else:
        for layer in LAYERS + (OPS,):
            base = Path(settings.lake_root) / layer
            found[layer] = sorted(p.name for p in base.iterdir() if (p / "_delta_log").is_dir()
                                  and _committed(f.name for f in (p / "_delta_log").iterdir())) if base.is_dir() else []
    return found


def catalog_name(layer: str, name: str) -> str:
    """The catalog name of the Delta table in folder ``<layer>/<name>``."""
    return f"{layer}.{name}"


def _live_views(layer: str, names: list[str]) -> dict[str, str]:
    """``gold.<kpi>_live`` -> its body, for every KPI whose final and open tables are both in ``names``."""
    from gold.transforms import KPIS, LIVE_SUFFIX, OPEN_SUFFIX, live_sql

    if layer != "gold":
        return {}
    return {f"gold.{k.name}{LIVE_SUFFIX}": live_sql(f"gold.{k.name}", f"gold.{k.name}{OPEN_SUFFIX}")
            for k in KPIS if k.name in names and k.name + OPEN_SUFFIX in names}


def registration_sql(settings: Settings, tables: dict[str, list[str]]) -> list[str]:
    out = []
    for layer, names in tables.items():
        out.append(f"CREATE DATABASE IF NOT EXISTS {layer}")
        for name in names:
            full = catalog_name(layer, name)
            out.append(f"CREATE TABLE IF NOT EXISTS {full} USING DELTA LOCATION '{settings.table_path(layer, name)}'")
        out += [f"CREATE OR REPLACE VIEW {view} AS {body}" for view, body in _live_views(layer, names).items()]
        events = events_view_sql([f"{layer}.{n}" for n in names]) if layer == OPS else None
        if events:
            out.append(f"CREATE OR REPLACE VIEW {OPS}.{VIEW} AS {events}")
    return out


def events_view_sql(names: list[str]) -> str | None:
    """The body of the ``ops.pipeline_events`` view: every stage's event table present in ``names``."""
    stages = [n for n in (f"{OPS}.{table_name(stage)}" for stage in STAGES) if n in names]
    return " UNION ALL ".join(f"SELECT {SELECT_LIST} FROM {n}" for n in stages) or None


def register_tables(spark, settings: Settings) -> dict[str, list[str]]:
    """Register every Delta table of the lake. The session's SQL conf ``ROOT_CONF`` says which lake
    its names point to; names registered for another lake root (the same session used for two
    lakes: the tests) are dropped first. Only metadata changes: the tables are external."""
    tables = list_tables(settings)
    before = spark.conf.get(ROOT_CONF, None)
    if before not in (None, settings.lake_root):
        # views first: dropping a view whose table is already gone makes Spark resolve its body to
        # uncache it, and log the failure with the view's whole plan (a WARN of ~100 lines)
        names = [(t.tableType == "VIEW", layer, t.name) for layer in LAYERS + (OPS,)
                 if spark.catalog.databaseExists(layer)
                 for t in spark.catalog.listTables(layer) if t.tableType != "TEMPORARY"]
        for is_view, layer, name in sorted(names, key=lambda n: not n[0]):
            spark.sql(f"DROP {'VIEW' if is_view else 'TABLE'} IF EXISTS {layer}.{name}")
    spark.conf.set(ROOT_CONF, settings.lake_root)
    for statement in registration_sql(settings, tables):
        try:
            spark.sql(statement)
        except Exception as e:  # a KPI table of another layout: its live view only is missing
            if not statement.startswith("CREATE OR REPLACE VIEW"):
                raise
            log.warning("view not registered (%s): %s", statement.split(" AS ", 1)[0].rsplit(" ", 1)[-1],
                        str(e).splitlines()[0])
    return tables


def catalog_names(tables: dict[str, list[str]]) -> list[str]:
    """Every name ``register_tables`` makes queryable (tables, the KPIs' live views, the event
    log's view)."""
    names = []
    for layer, found in tables.items():
        names += [catalog_name(layer, name) for name in found] + list(_live_views(layer, found))
        if layer == OPS and events_view_sql([f"{layer}.{n}" for n in found]):
            names.append(f"{OPS}.{VIEW}")
    return sorted(names)


def missing_table_message(error: str, tables: dict[str, list[str]]) -> str | None:
    """For Spark's TABLE_OR_VIEW_NOT_FOUND: one line with the closest names the lake has."""
    m = re.search(r"\[TABLE_OR_VIEW_NOT_FOUND\] The table or view (\S+) cannot be found", error)
    if not m:
        return None
    missing = m.group(1).replace("`", "").removeprefix("spark_catalog.")
    names = catalog_names(tables)
    close = difflib.get_close_matches(missing, names, n=3, cutoff=0.6)
    if close:
        hint = f"did you mean {' or '.join(close)}?"
    elif names:
        hint = "tables: " + ", ".join(names)
    else:
        hint = "the lake has no tables yet (run `lakehouse run all`)"
    return f"table or view {missing} does not exist in the lake; {hint}"
