"""Gold transforms: windowed KPIs, enrichment and the Kafka payload. Pure DataFrame functions,
the same for a batch recomputation and for each micro-batch of the streaming job.

A KPI is declared once as measures (``Measure``): the aggregate a micro-batch computes over its
rows (a partial value per window and group), and how partial values combine (counts and sums
add, max takes the greatest, an average is recomputed from an exact sum and count kept beside
it). Each micro-batch of the streaming job combines its partial rows with the rows of the
windows still open (``Kpi.settle``): a window silver's watermark has passed is complete and
goes, once, to the KPI's table; the others stay in ``<kpi>_open`` (``gold.job``).

Column names keep the seed notebooks' (nb_commandes, total_ventes, max_commande, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from common.settings import Settings

TVA_RATE = 0.2


def _windowed(df: DataFrame, duration: str, slide: str | None, keys: tuple[str, ...], *aggs) -> DataFrame:
    w = F.window("event_time", duration, slide) if slide else F.window("event_time", duration)
    grouped = df.groupBy(w.alias("window"), *keys).agg(*aggs)
    measures = [c for c in grouped.columns if c != "window" and c not in keys]
    return grouped.select(F.col("window.start").alias("window_start"), F.col("window.end").alias("window_end"),
                          *keys, *measures)


@dataclass(frozen=True)
class Measure:
    """One column of a KPI: ``agg``, its partial value over a micro-batch's rows, and ``combine``,
    the aggregate over partial rows that gives the KPI's value. ``state`` columns are kept only so
    that another measure (an average) stays exact."""

    name: str
    agg: str
    combine: str
    state: bool = False


def _count(name: str) -> Measure:
    return Measure(name, "count(1)", f"sum({name})")


def _cents(name: str, column: str) -> Measure:
    # each batch's sum of cent amounts is rounded back to cents, so the sum of partials stays exact
    return Measure(name, f"round(sum({column}), 2)", f"round(sum({name}), 2)")


def _max(name: str, column: str) -> Measure:
    return Measure(name, f"max({column})", f"max({name})")


def _average(name: str, total: str, count: str, column: str) -> Measure:
    return Measure(name, f"round(avg({column}), 2)",
                   # CAST: the same division in Spark SQL and in DataFusion (serving.native), which divides integers
                   f"CASE WHEN sum({count}) > 0 THEN round(CAST(sum({total}) AS DOUBLE) / sum({count}), 2) END")


@dataclass(frozen=True)
class Kpi:
    name: str                      # gold table
    source: str                    # silver table
    keys: tuple[str, ...]          # group columns (``row_keys`` adds window_start/window_end)
    window: Callable[[Settings], tuple[str, str | None]]  # its window size and slide, from settings
    measures: tuple[Measure, ...]

    def window_spec(self, settings: Settings) -> tuple[str, str | None]:
        return self.window(settings)

    @property
    def row_keys(self) -> tuple[str, ...]:
        """What identifies a KPI row: its window and group."""
        return ("window_start", "window_end") + self.keys

    @property
    def columns(self) -> tuple[str, ...]:
        """The notebook's KPI columns (state columns left out)."""
        return tuple(m.name for m in self.measures if not m.state)

    def aggregate(self, df: DataFrame, settings: Settings, state: bool = True) -> DataFrame:
        """Rows -> one row per window and group (with the state columns unless ``state`` is false)."""
        size, slide = self.window_spec(settings)
        return self.aggregate_with(df, size, slide, state)

    def aggregate_with(self, df: DataFrame, size: str, slide: str | None = None, state: bool = False) -> DataFrame:
        measures = [m for m in self.measures if state or not m.state]
        return _windowed(df, size, slide, self.keys, *[F.expr(m.agg).alias(m.name) for m in measures])

    def combine(self, partials: DataFrame) -> DataFrame:
        """Partial rows (one per micro-batch that touched a window and group) -> the KPI's rows."""
        return partials.groupBy(*self.row_keys).agg(*[F.expr(m.combine).alias(m.name) for m in self.measures])

    def settle(self, current, closed_by_ms: int | None):
        """The KPI's current rows (``combine`` of the open windows' rows and a batch's partial
        rows, collected: a ``pyarrow.Table``, a few rows per open window and group) split into
        (closed, still open) by ``closed_by_ms`` (epoch ms): a window is closed when it ends at or
        before it; None closes nothing."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if closed_by_ms is None:
            return current.slice(0, 0), current
        ends = pc.cast(pc.cast(current.column("window_end"), pa.timestamp("us", "UTC")), pa.int64())
        closed = pc.less_equal(ends, pa.scalar(int(closed_by_ms) * 1000, pa.int64()))
        return current.filter(closed), current.filter(pc.invert(closed))


SOURCES = ("orders", "order_items", "logs", "metrics")  # the silver tables gold reads

KPIS: tuple[Kpi, ...] = (
    Kpi("customer_order_kpis", "orders", ("customer_id",), lambda s: (s.kpi_window, s.kpi_slide),
        (_count("nb_commandes"), _cents("total_ventes", "total"), _max("max_commande", "total"))),
    Kpi("customer_minute_totals", "orders", ("customer_id",), lambda s: (s.minute_window, None),
        (_count("nb_commandes"), _cents("total_commandes", "total"))),
    Kpi("product_sales", "order_items", ("product_id", "product_name"), lambda s: (s.minute_window, None),
        (_count("nb_ventes"), Measure("quantite_totale", "sum(quantity)", "sum(quantite_totale)"),
         _cents("ca_total", "subtotal"))),
    Kpi("log_level_counts", "logs", ("level",), lambda s: (s.minute_window, None), (_count("nb_logs"),)),
    Kpi("module_stats", "logs", ("module",), lambda s: (s.minute_window, None),
        (_count("nb_logs"), _average("duree_moyenne_ms", "somme_duree_ms", "nb_durees", "duration_ms"),
         Measure("somme_duree_ms", "coalesce(sum(CAST(duration_ms AS BIGINT)), 0L)",
                 "sum(somme_duree_ms)", state=True),
         Measure("nb_durees", "count(duration_ms)", "sum(nb_durees)", state=True))),
    Kpi("host_metrics", "metrics", ("host",), lambda s: (s.host_window, None),
        (_average("avg_cpu", "somme_cpu", "nb_mesures", "cpu_percent"), _max("max_mem", "memory_percent"),
         _count("nb_mesures"), Measure("somme_cpu", "sum(cpu_percent)", "sum(somme_cpu)", state=True))),
)
_BY_NAME = {k.name: k for k in KPIS}


OPEN_SUFFIX = "_open"  # gold/<kpi>_open: the windows silver's watermark has not passed yet
LIVE_SUFFIX = "_live"  # gold.<kpi>_live: the view of every window, closed and open (gold.<kpi> + gold.<kpi>_open)


def kpi_named(name: str) -> Kpi | None:
    return _BY_NAME.get(name)


def live_sql(final: str, open_: str) -> str:
    """The body of the ``gold.<kpi>_live`` view: the closed windows' rows, then the open ones'
    (no window is in both: a plain union, the same in Spark SQL and in DataFusion)."""
    return f"SELECT * FROM {final} UNION ALL SELECT * FROM {open_}"


# The notebooks' computations, by name (batch or per-batch; the columns the notebooks show).
def customer_order_kpis(orders: DataFrame, window: str, slide: str) -> DataFrame:
    """Per customer, sliding windows: nb_commandes, total_ventes, max_commande."""
    return _BY_NAME["customer_order_kpis"].aggregate_with(orders, window, slide)


def customer_minute_totals(orders: DataFrame, window: str) -> DataFrame:
    return _BY_NAME["customer_minute_totals"].aggregate_with(orders, window)


def product_sales(items: DataFrame, window: str) -> DataFrame:
    return _BY_NAME["product_sales"].aggregate_with(items, window)


def log_level_counts(logs: DataFrame, window: str) -> DataFrame:
    return _BY_NAME["log_level_counts"].aggregate_with(logs, window)


def module_stats(logs: DataFrame, window: str) -> DataFrame:
    return _BY_NAME["module_stats"].aggregate_with(logs, window)


def host_metrics(metrics: DataFrame, window: str) -> DataFrame:
    return _BY_NAME["host_metrics"].aggregate_with(metrics, window)


def enrich_orders(orders: DataFrame, customers: DataFrame) -> DataFrame:
    """Left join of orders with the customer dimension; unknown customers keep null attributes."""
    c = customers.select("customer_id", "nom", "ville", "segment")
    return (orders.join(c, "customer_id", "left")
                  .select("order_id", "customer_id", "nom", "ville", "segment", "total", "event_time",
                          F.col("nom").isNotNull().alias("customer_known")))


def enriched_payload(orders: DataFrame) -> DataFrame:
    """Kafka records for ``commandes-enrichies``: key customer_id, JSON value with tva."""
    value = F.to_json(F.struct("order_id", "customer_id", "total",
                               F.round(F.col("total") * TVA_RATE, 2).alias("tva"),
                               F.date_format(F.current_timestamp(), "yyyy-MM-dd'T'HH:mm:ss.SSS'Z'")
                               .alias("processed_at")))
    return orders.select(F.col("customer_id").cast("string").alias("key"), value.alias("value"))
