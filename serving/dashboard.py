"""``lakehouse dashboard``: one web page of gold and of the pipeline's health, refreshing itself
while the streams run.

Streamlit serves it (its own JavaScript and the Vega-Lite charts ship in the package: no CDN, it
works offline); the page reads the Delta tables with the Spark-free reader (``serving.native``), so
it opens in about a second and never waits for a JVM. Sections: gold KPIs (sales per customer per
minute, product revenue, log levels over time, the most loaded hosts, enriched orders by segment
and city), then the pipeline (per query rows/s, batch duration and records behind from
``ops.pipeline_events``, event -> gold latency, late, quarantined and rescued records per batch, the last
data-quality run per layer from ``ops.dq_results``, the last silver batches with schema drift). Each empty part says what would fill it.

``python -m streamlit run serving/dashboard.py`` runs this file; ``lakehouse dashboard`` does that
with the host, port and refresh from the settings. Importing it renders nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common.settings import OPS, Settings, interval_seconds

EMPTY_GOLD = "no gold data yet: run `lakehouse run all` (or `lakehouse demo`)"
EMPTY_EVENTS = "no micro-batch logged yet: the event log fills as `lakehouse run ...` runs"
EMPTY_DQ = "no data-quality run yet: run `lakehouse dq`"
NO_DRIFT = "no schema drift: every field the producers sent is in silver's schemas"


def queries(lake) -> dict[str, str | None]:
    """The SQL of each panel over the lake's relations (None: its table does not exist yet)."""
    def rel(name):
        return lake.relation(name)

    out = {}
    r = rel("gold.customer_minute_totals_live")
    out["customer_sales"] = r and (f"SELECT window_start, customer_id, total_commandes FROM {r} WHERE window_start >= "
                                   f"(SELECT max(window_start) FROM {r}) - INTERVAL '30 minutes' ORDER BY window_start")
    r = rel("gold.product_sales_live")
    out["product_revenue"] = r and (f"SELECT product_name, round(sum(ca_total), 2) AS ca_total, sum(nb_ventes) AS "
                                    f"nb_ventes FROM {r} GROUP BY product_name ORDER BY ca_total DESC, product_name")
    r = rel("gold.log_level_counts_live")
    out["log_levels"] = r and (f"SELECT window_start, level, nb_logs FROM {r} WHERE window_start >= "
                               f"(SELECT max(window_start) FROM {r}) - INTERVAL '30 minutes' ORDER BY window_start")
    r = rel("gold.host_metrics_live")
    out["hosts"] = r and (f"SELECT host, round(avg(avg_cpu), 1) AS avg_cpu, max(max_mem) AS max_mem FROM {r} "
                          f"WHERE window_start >= (SELECT max(window_start) FROM {r}) - INTERVAL '10 minutes' "
                          f"GROUP BY host ORDER BY avg_cpu DESC, host LIMIT 10")
    r = rel("gold.orders_enriched")
    out["segments"] = r and (f"SELECT coalesce(segment, 'unknown customer') AS segment, coalesce(ville, '-') AS ville, "
                             f"count(*) AS orders, round(sum(total), 2) AS total FROM {r} GROUP BY 1, 2 "
                             f"ORDER BY orders DESC, segment, ville")
    r = rel(f"{OPS}.pipeline_events")
    out["events"] = r and (f"SELECT query, ended_at, processed_rows_per_second, duration_ms, records_behind, "
                           f"files_behind, late, quarantined, rescued, event_to_gold_p50_ms / 1000.0 AS p50_s, "
                           f"event_to_gold_max_ms / 1000.0 AS max_s FROM {r} WHERE ended_at >= "
                           f"(SELECT max(ended_at) FROM {r}) - INTERVAL '1 hour' ORDER BY ended_at")
    out["drift"] = r and (f"SELECT ended_at, batch_id, rescued, schema_drift FROM {r} WHERE query = 'silver' AND "
                          f"schema_drift IS NOT NULL ORDER BY ended_at DESC LIMIT 20")
    r = rel(f"{OPS}.dq_results")
    out["dq"] = r and (f"SELECT d.layer, d.run_at, sum(CAST(d.success AS INT)) AS passed, count(*) AS expectations "
                       f"FROM {r} d JOIN (SELECT layer, max(run_at) AS last FROM {r} GROUP BY layer) l "
                       f"ON d.layer = l.layer AND d.run_at = l.last GROUP BY d.layer, d.run_at ORDER BY d.layer")
    return out


def load(settings: Settings) -> dict[str, list[dict] | None]:
    """Every panel's rows (None: its table does not exist yet)."""
    from serving.native import NativeLake

    lake = NativeLake(settings)
    return {name: (lake.sql(sql) if sql else None) for name, sql in queries(lake).items()}


def render(settings: Settings) -> None:  # pragma: no cover - exercised in a real browser (tests/test_dashboard.py)
    import pandas as pd
    import streamlit as st

    st.set_page_config(page_title="Lakehouse", layout="wide")
    st.title("Lakehouse: gold and pipeline health")

    @st.fragment(run_every=interval_seconds(settings.dashboard_refresh))
    def page():
        data = load(settings)

        def frame(name):
            rows = data.get(name)
            return pd.DataFrame(rows) if rows else None

        st.caption(f"lake {settings.lake_root} - refreshed every {settings.dashboard_refresh}")

        def panel(title: str, name: str, draw, empty: str = EMPTY_GOLD) -> None:
            st.subheader(title)
            df = frame(name)
            if df is None:
                st.info(empty)
            else:
                draw(df)

        def revenue(df):
            st.bar_chart(df, x="product_name", y="ca_total")
            st.table(df.set_index("product_name"))

        st.header("Gold")
        for row in ((("Sales per customer per minute", "customer_sales",
                      lambda df: st.line_chart(df, x="window_start", y="total_commandes", color="customer_id")),
                     ("Product revenue", "product_revenue", revenue)),
                    (("Log levels over time", "log_levels",
                      lambda df: st.line_chart(df, x="window_start", y="nb_logs", color="level")),
                     ("Most loaded hosts (last 10 minutes)", "hosts",
                      lambda df: st.bar_chart(df, x="host", y=["avg_cpu", "max_mem"], stack=False)))):
            for column, args in zip(st.columns(len(row)), row):
                with column:
                    panel(*args)
        panel("Enriched orders by segment and city", "segments",
              lambda df: st.bar_chart(df, x="segment", y="orders", color="ville"))

        st.header("Pipeline")
        events = frame("events")
        if events is None:
            st.info(EMPTY_EVENTS)
        else:
            charts = (("Rows/s per query", events, "processed_rows_per_second"),
                      ("Batch duration (ms)", events, "duration_ms"),
                      ("Records behind Kafka", events[events["records_behind"].notna()], "records_behind"))
            for column, (title, df, y) in zip(st.columns(3), charts):
                with column:
                    st.subheader(title)
                    st.line_chart(df, x="ended_at", y=y, color="query")
            left, right = st.columns(2)
            with left:
                st.subheader("Event -> gold latency (s): median and oldest order of each batch")
                st.line_chart(events[events["query"] == "gold_orders"], x="ended_at", y=["p50_s", "max_s"])
            with right:
                st.subheader("Late, quarantined and rescued records per silver batch")
                st.bar_chart(events[events["query"] == "silver"], x="ended_at", y=["late", "quarantined", "rescued"])
        panel("Last data-quality run per layer", "dq", lambda df: st.table(df.set_index("layer")), EMPTY_DQ)
        panel("Schema drift: the last silver batches with fields the schema does not know", "drift",
              lambda df: st.table(df.set_index("ended_at")),
              EMPTY_EVENTS if data.get("drift") is None else NO_DRIFT)

    page()


def serve(settings: Settings) -> int:
    """``streamlit run`` this file on the configured host and port, until Ctrl-C."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(Path(__file__).resolve()),
           "--server.address", settings.dashboard_host, "--server.port", str(settings.dashboard_port),
           "--server.headless", "true", "--browser.gatherUsageStats", "false", "--global.developmentMode", "false",
           "--runner.magicEnabled", "false"]
    print(f"dashboard on http://{settings.dashboard_host}:{settings.dashboard_port} (Ctrl-C stops it)", flush=True)
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":  # streamlit runs this file as __main__
    from common.settings import get_settings

    render(get_settings().acting_as("reader"))
