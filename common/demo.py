"""The README demo: the whole flow on the embedded local stack, printed step by step."""

from __future__ import annotations

import time
from pathlib import Path

from common.catalog import register_tables
from common.generator import GenOptions, produce
from common.runner import STAGES, run
from common.settings import Settings


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _show(spark, query: str, limit: int = 20) -> None:
    print(f"lakehouse sql \"{query}\"")
    spark.sql(query).show(limit, truncate=False)


def demo(settings: Settings, count: int = 2000) -> int:
    from common.spark import get_spark
    from common.stack import Stack

    t0 = time.monotonic()
    _step("local stack: real Kafka (KRaft) + real MinIO")
    for s in Stack(settings).up():
        print(s.line())
    _step(f"produce {count} records per topic with duplicates, late and malformed records")
    produce(settings, GenOptions(topics=settings.source_topics, count=count, seed=int(time.time()),
                                 duplicate_pct=5, late_pct=3, malformed_pct=3,
                                 ledger=Path(settings.stack_dir) / "ledger.jsonl"))
    spark = get_spark(settings, app_name="lakehouse-demo")
    stages = tuple(s for s in STAGES if Path(__file__).resolve().parent.parent.joinpath(s, "job.py").exists())
    _step(f"run {', '.join(stages)} with trigger availableNow (one app, each query its own checkpoint)")
    run(stages, settings, "availableNow", spark=spark)
    register_tables(spark, settings)
    _step("bronze tables on MinIO (Delta)")
    _show(spark, "SELECT topic, count(*) AS records, min(offset) AS first_offset, max(offset) AS last_offset "
                 "FROM (SELECT * FROM bronze.commandes_json UNION ALL SELECT * FROM bronze.logs_application "
                 "UNION ALL SELECT * FROM bronze.metrics) GROUP BY topic ORDER BY topic")
    from common import demo_views

    for title, query in demo_views.QUERIES:
        if demo_views.available(spark, query):
            _step(title)
            _show(spark, query)
    print(f"\ndemo finished in {time.monotonic() - t0:.0f}s; query the tables yourself with "
          "`lakehouse sql \"SELECT ...\"`", flush=True)
    return 0
