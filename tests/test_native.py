"""The Spark-free reader (common.native): literals, object-store options, and a gold KPI read as
its combined view over partial rows, equal to the values computed by hand (no stack needed: a
lake on a local path, written with delta-rs)."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from common.native import NativeLake, literal, storage_options
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
    assert storage_options(s) == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
        "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true", "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false"}
    assert storage_options(Settings.from_env({"LAKEHOUSE_LAKE_ROOT": "/tmp/lake"})) == {}


def test_kpi_view_combines_partials_like_spark(tmp_path):
    """module_stats' average is an exact sum over an exact count of integers: 2 partial rows of one
    window and module give (100 + 251) / 3 = 117.0 -> 117.0, and the other module's 10 / 4 = 2.5
    (an integer division would say 2)."""
    settings = Settings.from_env({"LAKEHOUSE_LAKE_ROOT": str(tmp_path)})
    end = datetime(2026, 1, 18, 10, 1, tzinfo=timezone.utc)
    partials = pa.table({
        "window_start": pa.array([T, T, T], pa.timestamp("us", "UTC")),
        "window_end": pa.array([end, end, end], pa.timestamp("us", "UTC")),
        "module": ["cart", "cart", "payment"],
        "nb_logs": pa.array([2, 1, 4], pa.int64()),
        "duree_moyenne_ms": [50.0, 251.0, 2.5],
        "somme_duree_ms": pa.array([100, 251, 10], pa.int64()),
        "nb_durees": pa.array([2, 1, 4], pa.int64()),
    })
    write_deltalake(settings.table_path("gold", "module_stats"), partials)
    lake = NativeLake(settings)
    rows = {r["module"]: r for r in lake.rows("gold.module_stats", order_by="module")}
    assert (rows["cart"]["nb_logs"], rows["cart"]["duree_moyenne_ms"]) == (3, 117.0)
    assert (rows["payment"]["nb_logs"], rows["payment"]["duree_moyenne_ms"]) == (4, 2.5)
    assert lake.rows("gold.module_stats", module="payment", where=f"window_start <= {literal(T)}")[0]["nb_logs"] == 4
    assert lake.rows("silver.orders") == []  # a table not written yet reads as no rows
    assert len(lake.file_times("gold.module_stats", "nb_logs", 4)) == 1
    assert lake.file_times("gold.module_stats", "nb_logs", 99) == []
