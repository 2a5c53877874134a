"""The lake's Delta tables without Spark: delta-rs and its DataFusion SQL engine, for the commands
that must answer faster than a Spark session starts (``lakehouse trace``, ``lakehouse status``,
the dashboard). It only reads.

Tables are named as in the catalog (``silver.orders``, ``gold.<kpi>``); ``gold.<kpi>_live`` is the
same union of a KPI's final and open rows as Spark's view (``gold.transforms.live_sql``). A lookup reads only
the files whose column statistics can hold the value (Delta's data skipping, done by delta-rs).
Values are given as Python values and written into the SQL as typed literals by ``literal``.
"""

from __future__ import annotations

from datetime import datetime, timezone

from common.deltars import storage_options, uri
from common.settings import OPS, Settings


def literal(value) -> str:
    """``value`` as a DataFusion SQL literal (ints, floats, strings, bools, timestamps)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, datetime):
        utc = value.astimezone(timezone.utc) if value.tzinfo else value
        return f"TIMESTAMP '{utc:%Y-%m-%d %H:%M:%S.%f}'"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for {type(value).__name__}")


class NativeLake:
    """The lake's tables by catalog name, loaded on first use (a table that does not exist yet
    reads as no rows)."""

    def __init__(self, settings: Settings):
        from deltalake import QueryBuilder

        self.settings = settings
        self._builder = QueryBuilder()
        self._tables: dict[str, object] = {}  # catalog name -> DeltaTable, or None when absent

    def table(self, name: str):
        """The ``DeltaTable`` of catalog name ``layer.table``, or None."""
        if name not in self._tables:
            from deltalake import DeltaTable
            from deltalake.exceptions import TableNotFoundError

            layer, table = name.split(".", 1)
            path = self.settings.table_path(layer, table)
            try:
                self._tables[name] = DeltaTable(uri(path), storage_options=storage_options(self.settings, path))
            except TableNotFoundError:
                self._tables[name] = None
            else:
                self._builder.register(self._alias(name), self._tables[name])
        return self._tables[name]

    @staticmethod
    def _alias(name: str) -> str:
        return name.replace(".", "__")

    def relation(self, name: str) -> str | None:
        """What a query reads for ``name``: the table, or the body of a view of the catalog."""
        from common.eventlog import VIEW, select_list, table_name
        from common.pipeline import STAGES
        from gold.transforms import LIVE_SUFFIX, OPEN_SUFFIX, kpi_named, live_sql

        if name == f"{OPS}.{VIEW}":  # the event log's view: its stage tables, one after the other
            tables = {n: self.table(n) for n in (f"{OPS}.{table_name(stage)}" for stage in STAGES)}
            union = " UNION ALL ".join(
                f"SELECT {select_list(f.name for f in t.schema().fields)} FROM {self._alias(n)}"
                for n, t in tables.items() if t is not None)
            return f"({union}) AS events" if union else None
        layer, table = name.split(".", 1)
        kpi = kpi_named(table.removesuffix(LIVE_SUFFIX)) if layer == "gold" and table.endswith(LIVE_SUFFIX) else None
        if kpi:  # a KPI's live view: its final rows and its open windows
            final, open_ = f"gold.{kpi.name}", f"gold.{kpi.name}{OPEN_SUFFIX}"
            if self.table(final) is None or self.table(open_) is None:
                return None
            return f"({live_sql(self._alias(final), self._alias(open_))}) AS kpi"
        return self._alias(name) if self.table(name) is not None else None

    def sql(self, query: str) -> list[dict]:
        """Rows of a DataFusion query over registered aliases (``layer__table``)."""
        import pyarrow as pa

        return pa.table(self._builder.execute(query).read_all()).to_pylist()

    def rows(self, name: str, where: str = "", order_by: str = "", limit: int | None = None,
             columns: str = "*", **equals) -> list[dict]:
        """Rows of ``name`` whose columns equal ``equals``, and ``where`` (SQL) holds."""
        relation = self.relation(name)
        if relation is None:
            return []
        conditions = [f"\"{c}\" = {literal(v)}" for c, v in equals.items()] + ([where] if where else [])
        query = f"SELECT {columns} FROM {relation}"
        query += f" WHERE {' AND '.join(conditions)}" if conditions else ""
        query += f" ORDER BY {order_by}" if order_by else ""
        query += f" LIMIT {int(limit)}" if limit is not None else ""
        return self.sql(query)

    def file_times(self, name: str, column: str, value) -> list[datetime]:
        """When the files of ``name`` whose statistics can hold ``column = value`` were written
        (their commit times, give or take a batch)."""
        import pyarrow as pa

        dt = self.table(name)
        if dt is None:
            return []
        actions = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
        return sorted(datetime.fromtimestamp(a["modification_time"] / 1000, timezone.utc) for a in actions
                      if a.get(f"min.{column}") is None or a[f"min.{column}"] <= value <= a[f"max.{column}"])
