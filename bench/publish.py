"""What exactly-once publication costs (issue 37): a micro-batch of enriched orders published as
one Kafka transaction from the driver (``gold.publish.Publisher``: the rows collected from Spark,
sent, the ledger committed with them) against, in the same run, the same rows written by Spark's
Kafka sink (the at-least-once path gold used before) and by a plain (idempotent, not
transactional) kafka-python producer. Also the time from the transaction's commit to the batch's
last record reaching a ``read_committed`` consumer.

    python -m bench.publish [--sizes 1000,10000,50000] [--repeat 3]

Needs the stack (`lakehouse stack up`); each run writes to topics of its own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def _records(n: int, batch: int) -> list[tuple[str, str]]:
    """``n`` records shaped like ``gold.transforms.enriched_payload``'s."""
    return [(f"CUST-{i % 50:03d}", json.dumps({"order_id": f"ORD-{batch}-{i:06d}", "customer_id": f"CUST-{i % 50:03d}",
                                                "total": 123.45, "tva": 24.69,
                                                "processed_at": "2026-12-05T19:00:00.000Z"}, separators=(",", ":")))
            for i in range(n)]


def _until_visible(consumer, tp, target: int, timeout: float = 60) -> float:
    """Seconds until a read_committed ``consumer`` can read up to offset ``target`` (its LSO)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if consumer.end_offsets([tp])[tp] >= target:
            return time.perf_counter() - t0
        time.sleep(0.005)
    raise TimeoutError("records not visible to read_committed within 60 s")


def main(argv: list[str] | None = None) -> int:
    from kafka import TopicPartition

    from common.clients import kafka_consumer, kafka_producer
    from common.settings import Settings
    from common.spark import get_spark
    from common.streams import kafka_options
    from devstack.stack import Stack
    from gold.publish import Publisher

    p = argparse.ArgumentParser(prog="python -m bench.publish", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,50000", help="records per micro-batch, comma-separated")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    base = Settings.from_env().with_overrides(spark_master="local[2]", shuffle_partitions=2)
    tag = f"bench-publish-{int(time.time())}"
    topics = {k: f"{base.topic_enriched}.{tag}-{k}" for k in ("txn", "sink", "plain")}
    for t in topics.values():
        Stack(base.with_overrides(topic_enriched=t)).ensure_topics()
    spark = get_spark(base, app_name="bench-publish")
    publisher = Publisher(base, topics["txn"], "bench", tag)
    plain = kafka_producer(base, "bench-publish", role="gold", acks="all", linger_ms=5, batch_size=256 * 1024)
    consumer = kafka_consumer(base, "bench-publish", isolation_level="read_committed")
    partitions = sorted(consumer.partitions_for_topic(topics["txn"]))
    tps = [TopicPartition(topics["txn"], p) for p in partitions]
    batch_id = 0
    print(f"{'records':>8} | {'txn: collect+publish':>21} | {'of which commit':>15} | {'commit->visible':>15} | "
          f"{'Spark Kafka sink':>16} | {'plain producer':>14}")
    try:
        for n in sizes:
            rows = []
            for _ in range(args.repeat):
                recs = _records(n, batch_id)
                df = spark.createDataFrame(recs, "key string, value string").cache()
                df.count()
                t0 = time.perf_counter()
                collected = [(r.key, r.value) for r in df.collect()]
                commit_at: list[float] = []
                original = Publisher._commit

                def timed(self, original=original):
                    c = time.perf_counter()
                    original(self)
                    commit_at.append(time.perf_counter() - c)

                Publisher._commit = timed
                try:
                    publisher.publish(batch_id, collected)
                finally:
                    Publisher._commit = original
                txn = time.perf_counter() - t0
                ends = consumer.end_offsets(tps)  # the LSO now: the commit has returned
                visible = 0.0
                for tp in tps:
                    visible = max(visible, _until_visible(consumer, tp, ends[tp]))
                t0 = time.perf_counter()
                df.write.format("kafka").options(**kafka_options(base, role="gold", topic=topics["sink"])).save()
                sink = time.perf_counter() - t0
                t0 = time.perf_counter()
                futures = [plain.send(topics["plain"], key=k.encode(), value=v.encode()) for k, v in recs]
                plain.flush()
                for f in futures:
                    f.get(timeout=0)
                plainly = time.perf_counter() - t0
                df.unpersist()
                rows.append((txn, commit_at[0], visible, sink, plainly))
                batch_id += 1
            med = [statistics.median(c) for c in zip(*rows)]
            print(f"{n:>8} | {med[0] * 1000:>8.0f} ms {n / med[0]:>7.0f}/s | {med[1] * 1000:>12.0f} ms | "
                  f"{med[2] * 1000:>12.1f} ms | {med[3] * 1000:>6.0f} ms {n / med[3]:>6.0f}/s | "
                  f"{med[4] * 1000:>5.0f} ms {n / med[4]:>6.0f}/s", flush=True)
    finally:
        publisher.close()
        plain.close()
        consumer.close()
        spark.stop()
    print(f"(median of {args.repeat}; Python CPU of the publishing process: "
          f"{time.process_time():.1f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
