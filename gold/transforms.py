"""Gold transforms: windowed KPIs, enrichment and the Kafka payload. Pure DataFrame functions,
the same for a batch recomputation and for the streaming job (which adds the watermark).

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


def customer_order_kpis(orders: DataFrame, window: str, slide: str) -> DataFrame:
    """Per customer, sliding windows: nb_commandes, total_ventes, max_commande."""
    return _windowed(orders, window, slide, ("customer_id",),
                     F.count(F.lit(1)).alias("nb_commandes"), F.round(F.sum("total"), 2).alias("total_ventes"),
                     F.max("total").alias("max_commande"))


def customer_minute_totals(orders: DataFrame, window: str) -> DataFrame:
    return _windowed(orders, window, None, ("customer_id",),
                     F.count(F.lit(1)).alias("nb_commandes"), F.round(F.sum("total"), 2).alias("total_commandes"))


def product_sales(items: DataFrame, window: str) -> DataFrame:
    return _windowed(items, window, None, ("product_id", "product_name"),
                     F.count(F.lit(1)).alias("nb_ventes"), F.sum("quantity").alias("quantite_totale"),
                     F.round(F.sum("subtotal"), 2).alias("ca_total"))


def log_level_counts(logs: DataFrame, window: str) -> DataFrame:
    return _windowed(logs, window, None, ("level",), F.count(F.lit(1)).alias("nb_logs"))


def module_stats(logs: DataFrame, window: str) -> DataFrame:
    return _windowed(logs, window, None, ("module",), F.count(F.lit(1)).alias("nb_logs"),
                     F.round(F.avg("duration_ms"), 2).alias("duree_moyenne_ms"))


def host_metrics(metrics: DataFrame, window: str) -> DataFrame:
    return _windowed(metrics, window, None, ("host",), F.round(F.avg("cpu_percent"), 2).alias("avg_cpu"),
                     F.max("memory_percent").alias("max_mem"), F.count(F.lit(1)).alias("nb_mesures"))


@dataclass(frozen=True)
class Kpi:
    name: str                 # gold table
    source: str               # silver table
    watermark: str            # Settings attribute holding the watermark delay
    keys: tuple[str, ...]     # group columns (the MERGE key adds window_start/window_end)
    windows: tuple[str, ...]  # Settings attributes holding its window size (and slide)
    build: Callable[[DataFrame, Settings], DataFrame]

    def signature(self, settings: Settings) -> dict:
        """What the query's state depends on: restarting its checkpoint with other values is refused."""
        attrs = (*self.windows, self.watermark)
        return {"source": self.source, "keys": list(self.keys), **{a: getattr(settings, a) for a in attrs}}


KPIS: tuple[Kpi, ...] = (
    Kpi("customer_order_kpis", "orders", "watermark_orders", ("customer_id",), ("kpi_window", "kpi_slide"),
        lambda df, s: customer_order_kpis(df, s.kpi_window, s.kpi_slide)),
    Kpi("customer_minute_totals", "orders", "watermark_orders", ("customer_id",), ("minute_window",),
        lambda df, s: customer_minute_totals(df, s.minute_window)),
    Kpi("product_sales", "order_items", "watermark_orders", ("product_id", "product_name"), ("minute_window",),
        lambda df, s: product_sales(df, s.minute_window)),
    Kpi("log_level_counts", "logs", "watermark_logs", ("level",), ("minute_window",),
        lambda df, s: log_level_counts(df, s.minute_window)),
    Kpi("module_stats", "logs", "watermark_logs", ("module",), ("minute_window",),
        lambda df, s: module_stats(df, s.minute_window)),
    Kpi("host_metrics", "metrics", "watermark_metrics", ("host",), ("host_window",),
        lambda df, s: host_metrics(df, s.host_window)),
)


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
