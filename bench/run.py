"""A first benchmark: stage-by-stage backfill throughput with availableNow on the local stack.

    make bench                       # or: python -m bench.run --orders 20000

Produces ``--orders`` orders (and as many logs and metrics) into fresh topics, then times
bronze, silver and gold, each with ``availableNow`` in one Spark application, and writes
``bench/results/<date>.json`` and a row of ``bench/README.md``. The full harness of the
reliability issue (sustained rate, latency percentiles, recovery, small files, memory) builds on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from common.generator import GenOptions, produce
from common.runner import run, setup_logging
from common.settings import Settings
from common.stack import Stack

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench")
    p.add_argument("--orders", type=int, default=20000)
    args = p.parse_args(argv)
    setup_logging()
    base = Settings.from_env()
    tag = f"bench-{uuid.uuid4().hex[:6]}"
    s = base.with_overrides(lake_root=f"{base.lake_root.rstrip('/')}/bench/{tag}",
                            topic_orders=f"{tag}-commandes-json", topic_logs=f"{tag}-logs-application",
                            topic_metrics=f"{tag}-metrics", topic_enriched=f"{tag}-commandes-enrichies")
    stack = Stack(s)
    stack.up()
    stack.ensure_topics()
    t = time.monotonic()
    produce(s, GenOptions(topics=s.source_topics, count=args.orders, seed=1, duplicate_pct=5, late_pct=2,
                          malformed_pct=2, ledger=None, progress=False))
    produce_s = time.monotonic() - t
    from common import customers
    from common.spark import get_spark

    spark = get_spark(s, app_name="lakehouse-bench")
    customers.load(spark, s)
    timings = {}
    for stage in ("bronze", "silver", "gold"):
        t = time.monotonic()
        run((stage,), s, "availableNow", spark=spark)
        timings[stage] = time.monotonic() - t
    items = spark.read.format("delta").load(s.table_path("silver", "order_items")).count()
    records = 3 * args.orders
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
        "command": f"python -m bench.run --orders {args.orders}",
        "orders": args.orders, "records": records, "order_items": items,
        "produce_records_per_s": round(records / produce_s),
        "bronze_records_per_s": round(records / timings["bronze"]),
        "silver_orders_per_s": round(args.orders / timings["silver"]),
        "silver_items_per_s": round(items / timings["silver"]),
        "silver_records_per_s": round(records / timings["silver"]),
        "gold_s": round(timings["gold"], 1),
        "end_to_end_orders_per_s": round(args.orders / sum(timings.values())),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    out = HERE / "results" / f"{result['date'][:10]}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    with open(HERE / "README.md", "a") as f:
        f.write(f"| {result['date']} | {args.orders} | {result['bronze_records_per_s']} | "
                f"{result['silver_orders_per_s']} | {result['silver_items_per_s']} | {result['gold_s']} | "
                f"{result['end_to_end_orders_per_s']} |\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
