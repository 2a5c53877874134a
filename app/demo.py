"""The README demo: the whole flow on the embedded local stack, printed step by step."""

from __future__ import annotations

import importlib
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

from silver import customers
from serving.catalog import register_tables
from devstack.generator import GenOptions, produce
from app import dataflow
from app.runner import STAGES, run
from common.settings import Settings
from serving.status import format_status, read_status

# (title, query) printed after the pipeline ran; also the examples of README's "Query gold".
QUERIES: list[tuple[str, str]] = [
    ("bronze: raw records per topic, as received",
     "SELECT topic, count(*) AS records, count(DISTINCT partition) AS partitions FROM ({bronze}) "
     "GROUP BY topic ORDER BY topic"),  # {bronze}: the three bronze tables, named after the configured topics
    ("silver: rows per table",
     "SELECT 'orders' AS table_name, count(*) AS n FROM silver.orders UNION ALL "
     "SELECT 'order_items', count(*) FROM silver.order_items UNION ALL SELECT 'logs', count(*) FROM silver.logs "
     "UNION ALL SELECT 'metrics', count(*) FROM silver.metrics"),
    ("silver: quarantine by reason",
     "SELECT target_table, reason, count(*) AS records FROM silver.quarantine GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 6"),
    ("silver: late records (sent behind the watermark that earlier micro-batches reached)",
     "SELECT target_table, count(*) AS records, min(watermark) AS watermark, round(min(lateness_seconds)) AS "
     "min_behind_s, round(max(lateness_seconds)) AS max_behind_s FROM silver.late_records GROUP BY 1 ORDER BY 1"),
    ("gold: windows closed (final rows in gold.<kpi>: silver's watermark has passed them) and still open",
     "SELECT (SELECT count(*) FROM gold.customer_minute_totals) AS final_rows, (SELECT max(window_end) FROM "
     "gold.customer_minute_totals) AS closed_through, (SELECT count(*) FROM gold.customer_minute_totals_open) AS "
     "open_rows"),
    ("gold: latest customer KPIs, open windows included (sliding 2-minute windows, gold.<kpi>_live)",
     "SELECT * FROM gold.customer_order_kpis_live ORDER BY window_start DESC, total_ventes DESC LIMIT 5"),
    ("gold: orders per minute (event time), the last five minutes",
     "SELECT window_start, sum(nb_commandes) AS orders, round(sum(total_commandes), 2) AS total "
     "FROM gold.customer_minute_totals_live GROUP BY window_start ORDER BY window_start DESC LIMIT 5"),
    ("gold: product sales",
     "SELECT product_name, sum(nb_ventes) AS nb_ventes, sum(quantite_totale) AS quantite_totale, "
     "round(sum(ca_total), 2) AS ca_total FROM gold.product_sales_live GROUP BY product_name ORDER BY ca_total DESC "
     "LIMIT 5"),
    ("gold: most loaded hosts",
     "SELECT host, round(avg(avg_cpu), 2) AS avg_cpu, max(max_mem) AS max_mem, sum(nb_mesures) AS nb_mesures "
     "FROM gold.host_metrics_live GROUP BY host ORDER BY avg_cpu DESC"),
    ("gold: orders enriched with customers (unknown customers keep nulls)",
     "SELECT segment, count(*) AS orders, round(sum(total), 2) AS total FROM gold.orders_enriched "
     "GROUP BY segment ORDER BY orders DESC"),
]


def queries(settings: Settings) -> list[tuple[str, str]]:
    """``QUERIES`` for ``settings``: ``{bronze}`` replaced by its bronze tables."""
    bronze = " UNION ALL ".join(f"SELECT topic, partition FROM bronze.{src.bronze_table}" for src in settings.sources)
    return [(title, query.replace("{bronze}", bronze)) for title, query in QUERIES]


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def demo(settings: Settings, count: int = 2000) -> int:
    from common.spark import get_spark
    from devstack.stack import Stack

    t0 = time.monotonic()
    # one background thread for work the next steps do not wait on (a failure stays in its future and is
    # raised where its result is used): the Spark JVM's start, then Great Expectations' import
    ahead = ThreadPoolExecutor(1)
    # the JVM needs neither the stack nor the records until its first job: ~6 s of its start overlap the
    # stack's ~6 s of waiting for Kafka and MinIO
    session = ahead.submit(get_spark, settings, "lakehouse-demo")
    _step("local stack: real Kafka (KRaft) + real MinIO")
    for s in Stack(settings).up():
        print(s.line())
    now = datetime.now(timezone.utc).replace(microsecond=0)
    ledger = Path(settings.stack_dir) / "ledger.jsonl"
    _step(f"produce {count} records per topic over 8 minutes of event time (5% duplicates, 3% malformed)")
    produce(settings, GenOptions(topics=settings.source_topics, count=count, seed=int(time.time()),
                                 start_time=now - timedelta(minutes=10), event_spacing=480 / count,
                                 duplicate_pct=5, malformed_pct=3, ledger=ledger))
    spark = session.result()
    _step("load the customer dimension (lakehouse customers load)")
    print(f"{customers.load(spark, settings)} customers in silver.customers")
    _step("run bronze -> silver -> gold with trigger availableNow (one app, each query its own checkpoint)")
    t1 = time.monotonic()
    run(STAGES, settings, "availableNow", spark=spark)
    print(f"pipeline took {time.monotonic() - t1:.0f}s")
    _step("one more micro-batch: 200 records per topic, 20% of them sent 10 minutes late (behind the "
          "watermark the first batch set)")
    produce(settings, GenOptions(topics=settings.source_topics, count=200, seed=int(time.time()) + 1,
                                 start_time=now - timedelta(minutes=2), event_spacing=0.3, late_pct=20,
                                 late_by=600, ledger=ledger))
    run(STAGES, settings, "availableNow", spark=spark)
    register_tables(spark, settings)  # the queries below name them, as `lakehouse sql` does
    # Great Expectations' import (~7 s of one core) beside the queries, which mostly wait on the JVM;
    # ``from data_quality.runner import`` below waits for it (or imports it anew had it failed)
    ahead.submit(importlib.import_module, "data_quality.runner")
    ahead.shutdown(wait=False)
    for title, query in queries(settings):
        _step(title)
        print(f'lakehouse sql "{query}"')
        print(spark.sql(query).toPandas().to_string(index=False))
    _step("lakehouse status")
    print("\n".join(format_status(read_status(settings, dataflow.graph(settings)))))
    _step("lakehouse dq: Great Expectations suites over every layer")
    from data_quality.runner import run_dq

    dq = run_dq(spark, settings)
    print(f"\ndemo finished in {time.monotonic() - t0:.0f}s. Next: `lakehouse dashboard` to see it, "
          "`lakehouse sql \"SELECT ...\"`, `lakehouse run all` to keep streaming, `lakehouse stack down` to stop "
          "the stack.", flush=True)
    return dq
