"""The Spark-free reader (serving.native): literals, object-store options, and a gold KPI's final
table and live view, equal to the values written (no stack needed: a lake on a local path,
written with delta-rs)."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from common.deltars import storage_options
from serving.native import NativeLake, literal
from common.errors import SettingsError
from common.settings import Settings

CREDS = {"LAKEHOUSE_S3_ACCESS_KEY": "a", "LAKEHOUSE_S3_SECRET_KEY": "s3cr3t-value"}
T = datetime(2026, 1, 18, 10, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("value,sql", [
    (7, "7"), (1.5, "1.5"), (True, "true"), ("it's", "'it''s'"),
    (T, "TIMESTAMP '2026-01-18 10:00:00.000000'"),
])
def test_literal(value, sql):
    assert literal(value) == sql


def test_literal_refuses_what_it_cannot_quote():
    with pytest.raises(TypeError):
        literal(object())


def test_storage_options_follow_the_settings():
    s = Settings.from_env(CREDS)
    assert storage_options(s, s.table_path("gold", "t")) == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
        "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true", "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false"}
    assert storage_options(Settings.from_env({"LAKEHOUSE_LAKE_ROOT": "/tmp/lake"}), "/tmp/lake/gold/t") == {}
    # a bucket per layer: each table with the key of the role that acts in its zone, none for a zone it may not touch
    split = Settings.from_env({**CREDS, "LAKEHOUSE_LAKE_LAYOUT": "bucket-per-layer",
                               "LAKEHOUSE_S3_ACCESS_KEY_GOLD": "g", "LAKEHOUSE_S3_SECRET_KEY_GOLD": "gs"})
    gold = split.acting_as("gold")
    assert storage_options(gold, gold.table_path("gold", "t"))["AWS_ACCESS_KEY_ID"] == "g"
    assert storage_options(gold, gold.table_path("silver", "t"))["AWS_ACCESS_KEY_ID"] == "g"
    with pytest.raises(SettingsError, match="no key for"):
        storage_options(gold, gold.table_path("bronze", "t"))


def test_kpi_tables_and_live_view_read_without_spark(tmp_path):
    """A KPI's final table reads as it is; its live view (``gold.<kpi>_live``) is the final rows and
    the open windows' rows together, as Spark's view."""
    settings = Settings.from_env({"LAKEHOUSE_LAKE_ROOT": str(tmp_path)})
    end = datetime(2026, 1, 18, 10, 1, tzinfo=timezone.utc)

    def rows(starts, modules, counts, sums):
        return pa.table({
            "window_start": pa.array(starts, pa.timestamp("us", "UTC")),
            "window_end": pa.array([s.replace(minute=s.minute + 1) for s in starts], pa.timestamp("us", "UTC")),
            "module": modules, "nb_logs": pa.array(counts, pa.int64()),
            "duree_moyenne_ms": [round(s / c, 2) for s, c in zip(sums, counts)],
            "somme_duree_ms": pa.array(sums, pa.int64()), "nb_durees": pa.array(counts, pa.int64())})

    write_deltalake(settings.table_path("gold", "module_stats"), rows([T, T], ["cart", "payment"], [3, 4], [351, 10]))
    write_deltalake(settings.table_path("gold", "module_stats_open"), rows([end], ["cart"], [1], [7]))
    lake = NativeLake(settings)
    found = {r["module"]: r for r in lake.rows("gold.module_stats", order_by="module")}
    assert (found["cart"]["nb_logs"], found["cart"]["duree_moyenne_ms"]) == (3, 117.0)
    assert (found["payment"]["nb_logs"], found["payment"]["duree_moyenne_ms"]) == (4, 2.5)
    live = lake.rows("gold.module_stats_live", order_by="window_start, module")
    assert [(r["window_start"].minute, r["module"], r["nb_logs"]) for r in live] == [(0, "cart", 3), (0, "payment", 4),
                                                                                    (1, "cart", 1)]
    assert lake.rows("gold.customer_minute_totals_live") == []  # a KPI not written yet reads as no rows
    assert lake.rows("gold.module_stats", module="payment", where=f"window_start <= {literal(T)}")[0]["nb_logs"] == 4
    assert lake.rows("silver.orders") == []  # a table not written yet reads as no rows
    assert len(lake.file_times("gold.module_stats", "nb_logs", 4)) == 1
    assert lake.file_times("gold.module_stats", "nb_logs", 99) == []
