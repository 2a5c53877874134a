"""Queries the demo prints after the pipeline ran (each only when its tables exist)."""

from __future__ import annotations

QUERIES: list[tuple[str, str]] = []


def available(spark, query: str) -> bool:
    try:
        spark.sql(f"EXPLAIN {query}")
        return True
    except Exception:
        return False
