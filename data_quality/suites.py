"""Great Expectations suites per layer, defined in code (GE 1.x, Spark data source).

Silver's expectations come from the same declaration silver enforces in-stream
(``silver.rules.RULES``): each rule's predicate becomes an ``UnexpectedRowsExpectation`` whose
query selects the rows that break it, so a rule is written once.
"""

from __future__ import annotations

from dataclasses import dataclass

import great_expectations.expectations as gxe

from common.settings import Settings
from gold.transforms import KPIS
from silver.rules import LOG_LEVELS, ORDER_STATUSES, rules_for
from silver.transforms import RESCUED

COORDS = ("topic", "partition", "offset")


@dataclass(frozen=True)
class TableSuite:
    layer: str
    table: str
    expectations: tuple


def _not_null(*columns):
    return [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in columns]


def _rows_where_not(predicate: str, description: str):
    return gxe.UnexpectedRowsExpectation(unexpected_rows_query=f"SELECT * FROM {{batch}} WHERE NOT ({predicate})",
                                         description=description)


def rule_expectations(table: str) -> list:
    """The GE form of every silver rule about ``table`` (the third enforcement of silver.rules)."""
    return [_rows_where_not(f"coalesce({r.sql('')}, false)", f"rule {r.name}: {r.description}")
            for r in rules_for(table) if r.action != "warn" and r.on_table]


def _plausible_time(column: str = "event_time"):
    return _rows_where_not(f"{column} BETWEEN TIMESTAMP'2000-01-01' AND current_timestamp() + INTERVAL 1 DAY",
                           f"{column} is plausible (after 2000, not more than a day ahead)")


def bronze_suites(settings: Settings) -> list[TableSuite]:
    exps = (*_not_null(*COORDS, "value"), gxe.ExpectCompoundColumnsToBeUnique(column_list=list(COORDS)))
    return [TableSuite("bronze", settings.bronze_table_for(t), exps) for t in settings.source_topics]


def _rescued_share(settings: Settings):
    """Schema drift bounded: at most LAKEHOUSE_RESCUED_MAX_PCT % of a table's rows carry fields the
    schema does not know (``_rescued_data``, silver.transforms)."""
    return gxe.ExpectColumnValuesToBeNull(
        column=RESCUED, mostly=1 - settings.rescued_max_pct / 100,
        description=f"at most {settings.rescued_max_pct} % of rows with {RESCUED} (LAKEHOUSE_RESCUED_MAX_PCT)")


def silver_suites(settings: Settings) -> list[TableSuite]:
    pct = [gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=100)
           for c in ("cpu_percent", "memory_percent", "disk_percent")]
    suites = [
        TableSuite("silver", "orders", (*_not_null("order_id", "customer_id", "event_time", *COORDS),
                                        gxe.ExpectColumnValuesToBeUnique(column="order_id"),
                                        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=list(ORDER_STATUSES)),
                                        _plausible_time(), *rule_expectations("orders"))),
        TableSuite("silver", "order_items", (*_not_null("order_id", "line", "product_id", *COORDS),
                                             gxe.ExpectCompoundColumnsToBeUnique(column_list=["order_id", "line"]),
                                             _plausible_time(), *rule_expectations("order_items"))),
        TableSuite("silver", "logs", (*_not_null("event_time", "level", "module"),
                                      gxe.ExpectColumnValuesToBeInSet(column="level", value_set=list(LOG_LEVELS)),
                                      _plausible_time(), *rule_expectations("logs"))),
        TableSuite("silver", "metrics", (*_not_null("event_time", "host"), *pct, _plausible_time(),
                                         *rule_expectations("metrics"))),
    ]
    return [TableSuite(s.layer, s.table, (*s.expectations, _rescued_share(settings))) for s in suites]


def gold_suites(settings: Settings) -> list[TableSuite]:
    suites = []
    for kpi in KPIS:
        exps = [*_not_null("window_start", "window_end", *kpi.keys),
                _rows_where_not("window_end > window_start", "window_end > window_start"),
                gxe.ExpectCompoundColumnsToBeUnique(column_list=["window_start", "window_end", *kpi.keys])]
        counts = {"customer_order_kpis": "nb_commandes", "customer_minute_totals": "nb_commandes",
                  "product_sales": "nb_ventes", "log_level_counts": "nb_logs", "module_stats": "nb_logs",
                  "host_metrics": "nb_mesures"}[kpi.name]
        exps.append(gxe.ExpectColumnValuesToBeBetween(column=counts, min_value=1))
        for total in {"customer_order_kpis": ("total_ventes",), "customer_minute_totals": ("total_commandes",),
                      "product_sales": ("ca_total",)}.get(kpi.name, ()):
            exps.append(gxe.ExpectColumnValuesToBeBetween(column=total, min_value=0))
        if kpi.name == "customer_order_kpis":
            exps.append(_rows_where_not("max_commande <= total_ventes + 0.005", "max_commande <= total_ventes"))
        if kpi.name == "product_sales":
            # ca_total = the sum of its items in silver, window by window
            exps.append(gxe.UnexpectedRowsExpectation(
                description="ca_total = sum of the window's silver.order_items subtotals (within a cent)",
                unexpected_rows_query=(
                    "SELECT g.* FROM {batch} g LEFT JOIN (SELECT window(event_time, "
                    f"'{settings.minute_window}').start AS ws, product_id, round(sum(subtotal), 2) AS s "
                    "FROM silver.order_items GROUP BY 1, 2) i ON g.window_start = i.ws AND g.product_id = i.product_id "
                    "WHERE i.s IS NULL OR abs(g.ca_total - i.s) > 0.01")))
        suites.append(TableSuite("gold", kpi.name, tuple(exps)))
    return suites


def reconciliation_suites(settings: Settings) -> list[TableSuite]:
    """Across layers, on the counts silver recorded per batch (silver.rule_outcomes)."""
    def recorded(route: str, table: str) -> str:
        return (f"(SELECT coalesce(sum(failed), 0) FROM silver.rule_outcomes "
                f"WHERE rule = 'route:{route}' AND `table` = '{table}')")

    exps = []
    for table in ("orders", "logs", "metrics"):
        exps.append(gxe.UnexpectedRowsExpectation(
            description=f"silver.{table} rows = valid rows recorded by silver",
            unexpected_rows_query=f"SELECT * FROM (SELECT count(*) AS n FROM silver.{table}) "
                                  f"WHERE n <> {recorded('valid', table)}"))
        exps.append(gxe.UnexpectedRowsExpectation(
            description=f"quarantined {table} records = quarantine rows recorded by silver",
            unexpected_rows_query=f"SELECT * FROM (SELECT count(*) AS n FROM silver.quarantine WHERE "
                                  f"target_table = '{table}') WHERE n <> {recorded('quarantine', table)}"))
        exps.append(gxe.UnexpectedRowsExpectation(
            description=f"late {table} records = late rows recorded by silver",
            unexpected_rows_query=f"SELECT * FROM (SELECT count(*) AS n FROM silver.late_records WHERE "
                                  f"target_table = '{table}') WHERE n <> {recorded('late', table)}"))
    exps.append(gxe.UnexpectedRowsExpectation(
        description="gold minute totals add up to silver order totals (within a cent per order)",
        unexpected_rows_query=(
            "SELECT * FROM (SELECT (SELECT coalesce(sum(total_commandes), 0) FROM gold.customer_minute_totals_live) AS g, "
            "(SELECT coalesce(sum(total), 0) FROM silver.orders) AS s, (SELECT count(*) FROM silver.orders) AS n) "
            "WHERE abs(g - s) > 0.01 * greatest(n, 1)")))
    # every silver row counted once by each tumbling-window KPI, over its closed and open windows (the
    # live view is a plain union: a window written twice, or both closed and open, counts twice here)
    for kpi, count, table in (("customer_minute_totals", "nb_commandes", "orders"),
                              ("product_sales", "nb_ventes", "order_items"), ("log_level_counts", "nb_logs", "logs"),
                              ("module_stats", "nb_logs", "logs"), ("host_metrics", "nb_mesures", "metrics")):
        exps.append(gxe.UnexpectedRowsExpectation(
            description=f"gold.{kpi} counts each silver.{table} row once",
            unexpected_rows_query=f"SELECT * FROM (SELECT (SELECT coalesce(sum({count}), 0) FROM gold.{kpi}_live) AS g, "
                                  f"(SELECT count(*) FROM silver.{table}) AS s) WHERE g <> s"))
    # the batch of this suite is silver.rule_outcomes itself
    return [TableSuite("silver", "rule_outcomes", tuple(exps))]


LAYERS = {"bronze": bronze_suites, "silver": silver_suites, "gold": gold_suites,
          "reconciliation": reconciliation_suites}
