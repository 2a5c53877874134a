"""Gold KPI transforms on tiny hand-computed DataFrames (chispa)."""

from __future__ import annotations

from datetime import datetime

from chispa import assert_df_equality

from gold import transforms as G


def _ts(s):
    return datetime.fromisoformat(f"2026-01-01T{s}")


def _orders(spark, rows):
    return spark.createDataFrame([(c, _ts(t), total) for c, t, total in rows],
                                 "customer_id string, event_time timestamp, total double")


def _out(df):
    return df.selectExpr("date_format(window_start, 'HH:mm:ss') AS ws", "date_format(window_end, 'HH:mm:ss') AS we",
                         *[c for c in df.columns if c not in ("window_start", "window_end")])


def test_sliding_windows_overlap_an_order_counts_twice(spark):
    orders = _orders(spark, [("C1", "10:00:30", 100.0), ("C1", "10:01:10", 50.0), ("C2", "10:01:59", 10.0)])
    got = _out(G.customer_order_kpis(orders, "2 minutes", "1 minute"))
    expected = spark.createDataFrame([
        ("09:59:00", "10:01:00", "C1", 1, 100.0, 100.0),
        ("10:00:00", "10:02:00", "C1", 2, 150.0, 100.0),
        ("10:01:00", "10:03:00", "C1", 1, 50.0, 50.0),
        ("10:00:00", "10:02:00", "C2", 1, 10.0, 10.0),
        ("10:01:00", "10:03:00", "C2", 1, 10.0, 10.0),
    ], "ws string, we string, customer_id string, nb_commandes long, total_ventes double, max_commande double")
    assert_df_equality(got, expected, ignore_nullable=True, ignore_row_order=True)


def test_tumbling_minute_totals(spark):
    orders = _orders(spark, [("C1", "10:00:30", 100.0), ("C1", "10:00:50", 0.1), ("C1", "10:01:10", 50.0)])
    got = _out(G.customer_minute_totals(orders, "1 minute"))
    expected = spark.createDataFrame([("10:00:00", "10:01:00", "C1", 2, 100.1), ("10:01:00", "10:02:00", "C1", 1, 50.0)],
                                     "ws string, we string, customer_id string, nb_commandes long, total_commandes double")
    assert_df_equality(got, expected, ignore_nullable=True, ignore_row_order=True)


def test_product_sales(spark):
    items = spark.createDataFrame([(1, "Laptop", _ts("10:00:01"), 2, 1999.98), (1, "Laptop", _ts("10:00:40"), 1, 999.99),
                                   (2, "Souris", _ts("10:00:59"), 3, 89.97)],
                                  "product_id int, product_name string, event_time timestamp, quantity int, subtotal double")
    got = _out(G.product_sales(items, "1 minute"))
    expected = spark.createDataFrame([("10:00:00", "10:01:00", 1, "Laptop", 2, 3, 2999.97),
                                      ("10:00:00", "10:01:00", 2, "Souris", 1, 3, 89.97)],
                                     "ws string, we string, product_id int, product_name string, nb_ventes long, "
                                     "quantite_totale long, ca_total double")
    assert_df_equality(got, expected, ignore_nullable=True, ignore_row_order=True)


def test_logs_and_hosts(spark):
    logs = spark.createDataFrame([(_ts("10:00:01"), "INFO", "auth", 10), (_ts("10:00:02"), "INFO", "auth", 20),
                                  (_ts("10:00:03"), "ERROR", "cart", 5)],
                                 "event_time timestamp, level string, module string, duration_ms int")
    levels = _out(G.log_level_counts(logs, "1 minute"))
    assert_df_equality(levels, spark.createDataFrame(
        [("10:00:00", "10:01:00", "INFO", 2), ("10:00:00", "10:01:00", "ERROR", 1)],
        "ws string, we string, level string, nb_logs long"), ignore_nullable=True, ignore_row_order=True)
    modules = _out(G.module_stats(logs, "1 minute"))
    assert_df_equality(modules, spark.createDataFrame(
        [("10:00:00", "10:01:00", "auth", 2, 15.0), ("10:00:00", "10:01:00", "cart", 1, 5.0)],
        "ws string, we string, module string, nb_logs long, duree_moyenne_ms double"),
        ignore_nullable=True, ignore_row_order=True)
    metrics = spark.createDataFrame([(_ts("10:00:01"), "h1", 10.0, 50.0), (_ts("10:00:29"), "h1", 20.0, 70.0),
                                     (_ts("10:00:31"), "h1", 90.0, 10.0)],
                                    "event_time timestamp, host string, cpu_percent double, memory_percent double")
    hosts = _out(G.host_metrics(metrics, "30 seconds"))
    assert_df_equality(hosts, spark.createDataFrame(
        [("10:00:00", "10:00:30", "h1", 15.0, 70.0, 2), ("10:00:30", "10:01:00", "h1", 90.0, 10.0, 1)],
        "ws string, we string, host string, avg_cpu double, max_mem double, nb_mesures long"),
        ignore_nullable=True, ignore_row_order=True)


def test_enrichment_keeps_unknown_customers(spark):
    orders = spark.createDataFrame([(1, "CUST-001", 10.0, _ts("10:00:00")), (2, "CUST-099", 20.0, _ts("10:00:00"))],
                                   "order_id int, customer_id string, total double, event_time timestamp")
    customers = spark.createDataFrame([("CUST-001", "Alice Martin", "Paris", "VIP")],
                                      "customer_id string, nom string, ville string, segment string")
    got = G.enrich_orders(orders, customers).select("order_id", "nom", "ville", "segment", "customer_known")
    expected = spark.createDataFrame([(1, "Alice Martin", "Paris", "VIP", True), (2, None, None, None, False)],
                                     "order_id int, nom string, ville string, segment string, customer_known boolean")
    assert_df_equality(got, expected, ignore_nullable=True, ignore_row_order=True)


def test_enriched_payload_has_tva(spark):
    orders = spark.createDataFrame([(1, "CUST-001", 100.0)], "order_id int, customer_id string, total double")
    row = G.enriched_payload(orders).collect()[0]
    import json

    v = json.loads(row.value)
    assert row.key == "CUST-001" and v["tva"] == 20.0 and v["order_id"] == 1 and v["processed_at"].endswith("Z")


def test_partials_of_any_batches_combine_into_the_kpi(spark):
    """``Kpi.combine`` of the partial rows of any split of the rows into batches equals the KPI
    computed over all rows at once; settled batch by batch (``Kpi.settle``, as gold_kpis does),
    every window is closed at most once and the closed and open rows together are the KPI."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from common.settings import Settings

    settings = Settings.from_env({"LAKEHOUSE_LAKE_ROOT": "/tmp/lake"})
    orders = _orders(spark, [("C1", "10:00:30", 100.05), ("C1", "10:00:50", 0.1), ("C1", "10:01:10", 50.0),
                             ("C2", "10:01:59", 10.0), ("C2", "10:02:01", 19.99)])
    items = spark.createDataFrame([(1, "Laptop", _ts("10:00:01"), 2, 1999.98), (1, "Laptop", _ts("10:00:40"), 1, 999.99),
                                   (2, "Souris", _ts("10:00:59"), 3, 89.97)],
                                  "product_id int, product_name string, event_time timestamp, quantity int, subtotal double")
    logs = spark.createDataFrame([(_ts("10:00:01"), "INFO", "auth", 10), (_ts("10:00:02"), "INFO", "auth", 21),
                                  (_ts("10:00:03"), "ERROR", "auth", None), (_ts("10:00:04"), "INFO", "cart", 5)],
                                 "event_time timestamp, level string, module string, duration_ms int")
    metrics = spark.createDataFrame([(_ts("10:00:01"), "h1", 10.0, 50.0), (_ts("10:00:29"), "h1", 20.5, 70.0),
                                     (_ts("10:00:02"), "h1", 33.3, 10.0)],
                                    "event_time timestamp, host string, cpu_percent double, memory_percent double")
    sources = {"orders": orders, "order_items": items, "logs": logs, "metrics": metrics}
    settled = []  # (closed, open) rows per KPI
    for kpi in G.KPIS:
        rows = sources[kpi.source].withColumn("batch", F.monotonically_increasing_id() % 3)
        partials = [kpi.aggregate(rows.filter(F.col("batch") == b).drop("batch"), settings) for b in range(3)]
        union = partials[0].unionByName(partials[1]).unionByName(partials[2])
        assert union.count() > kpi.aggregate(rows, settings).count() or kpi.name == "host_metrics", kpi.name
        assert_df_equality(kpi.combine(union), kpi.aggregate(rows.drop("batch"), settings), ignore_nullable=True,
                           ignore_row_order=True, ignore_column_order=False)
        # settled batch by batch (gold_kpis), closing by a watermark that moves with the batches'
        # event times: each window is closed once, and closed + open rows are the KPI
        total = kpi.aggregate(rows.drop("batch"), settings)
        by_time = sources[kpi.source].withColumn("batch", F.ntile(3).over(Window.partitionBy(F.lit(0)).orderBy("event_time")))
        open_rows, final = total.limit(0), total.limit(0)
        for b in (1, 2, 3):
            batch = by_time.filter(F.col("batch") == b).drop("batch")
            last_ms = batch.agg(F.max(F.unix_millis("event_time"))).collect()[0][0]
            current = kpi.combine(open_rows.unionByName(kpi.aggregate(batch, settings)))
            closed, still = kpi.settle(current.toArrow(), last_ms - 30_000 if b < 3 else None)
            open_rows = spark.createDataFrame(still, schema=current.schema)
            final = final.unionByName(spark.createDataFrame(closed, schema=current.schema))
        settled.append((final.count(), open_rows.count()))
        assert final.select(*kpi.row_keys).distinct().count() == final.count(), f"{kpi.name}: a window closed twice"
        assert_df_equality(final.unionByName(open_rows), total, ignore_nullable=True, ignore_row_order=True)
    assert sum(c for c, _ in settled) > 0 and sum(o for _, o in settled) > 0, settled  # some windows closed, not all


def test_fencing_is_recognised_in_each_shape_kafka_python_reports_it():
    """kafka-python reports a fenced producer three ways, depending on when the broker's answer
    arrives: the error itself (at the commit), a refused ``send`` carrying it, or an error-state
    message naming it. Each is the other driver's takeover; another Kafka error is not."""
    from kafka.errors import KafkaError, KafkaTimeoutError, ProducerFencedError

    from gold.publish import fenced

    assert fenced(ProducerFencedError())
    assert fenced(KafkaError("Cannot perform send because at least one previous transactional or idempotent "
                             "request has failed with errors.", ProducerFencedError()))
    assert fenced(KafkaError("Cannot execute transactional method because we are in an error state: "
                             f"{ProducerFencedError()}"))
    assert not fenced(KafkaTimeoutError("Failed to update metadata after 60.0 secs."))
    assert not fenced(KafkaError("Cannot perform send because at least one previous transactional or idempotent "
                                 "request has failed with errors.", KafkaTimeoutError()))


def test_a_session_moved_to_another_lake_drops_the_old_names_quietly(spark, tmp_path, capfd):
    """One session registering two lakes in turn (the tests, a notebook): the first lake's names
    are dropped, the live views before their tables, so that Spark never resolves a view whose
    table is already gone (it logs the view's whole plan when it does)."""
    from common.settings import Settings
    from serving.catalog import ROOT_CONF, register_tables

    first, second = (Settings.from_env({"LAKEHOUSE_LAKE_ROOT": str(tmp_path / name)}) for name in ("a", "b"))
    for kpi in G.KPIS[:2]:
        for name in (kpi.name, kpi.name + G.OPEN_SUFFIX):
            spark.createDataFrame([(1,)], "n INT").write.format("delta").save(first.table_path("gold", name))
    spark.createDataFrame([(1,)], "n INT").write.format("delta").save(second.table_path("silver", "orders"))
    previous = spark.conf.get(ROOT_CONF, None)
    try:
        assert register_tables(spark, first)["gold"] == sorted(n for k in G.KPIS[:2] for n in (k.name, k.name + G.OPEN_SUFFIX))
        live = {f"{k.name}{G.LIVE_SUFFIX}" for k in G.KPIS[:2]}
        assert live <= {t.name for t in spark.catalog.listTables("gold")}
        capfd.readouterr()
        assert register_tables(spark, second)["silver"] == ["orders"]
        assert not [t.name for t in spark.catalog.listTables("gold") if t.tableType != "TEMPORARY"]
        assert spark.table("silver.orders").count() == 1
        err = capfd.readouterr().err
        assert "TABLE_OR_VIEW_NOT_FOUND" not in err and "WARN" not in err, err[-2000:]
    finally:
        spark.conf.unset(ROOT_CONF) if previous is None else spark.conf.set(ROOT_CONF, previous)
