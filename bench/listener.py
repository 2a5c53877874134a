"""What one progress event costs the driver: pyspark's own conversion of the Java event (what a
plain ``StreamingQueryListener`` gets) against the project's (``common.listener``: the event's
JSON, one py4j call), on the progress of a stateful three-source query like silver's.

    python -m bench.listener [--repeat 30]

Needs no stack: a local Delta table in a temporary folder and a local session.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def stateful_progress(spark, folder: str):
    """The Java progress object of a finished availableNow query: three Delta sources, each
    deduplicated under a watermark (three state operators), unioned, into a no-op sink."""
    from functools import reduce

    from pyspark.sql import functions as F

    table = f"{folder}/source"
    (spark.range(300).withColumn("key", F.col("id") % 200).withColumn("event_time", F.current_timestamp())
     .write.format("delta").save(table))
    streams = [spark.readStream.format("delta").load(table).withWatermark("event_time", "1 minute")
               .dropDuplicatesWithinWatermark(["key"]).withColumn("source", F.lit(i)) for i in range(3)]
    query = (reduce(lambda a, b: a.unionByName(b), streams).writeStream.format("noop")
             .option("checkpointLocation", f"{folder}/checkpoint").trigger(availableNow=True).start())
    query.awaitTermination()
    return query._jsq.lastProgress()


def _time(convert, repeat: int) -> tuple[float, float]:
    """Median wall ms and median Python CPU ms of ``convert()``."""
    convert()  # warm
    wall, cpu = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        convert()
        wall.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def main(argv: list[str] | None = None) -> int:
    from pyspark.sql.streaming.listener import StreamingQueryProgress

    from common.listener import progress_event
    from common.settings import Settings
    from common.spark import get_spark

    p = argparse.ArgumentParser(prog="python -m bench.listener", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=30)
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    spark = get_spark(Settings.from_env().with_overrides(spark_master="local[2]", shuffle_partitions=2),
                      app_name="bench-listener")
    with tempfile.TemporaryDirectory() as folder:
        jprogress = stateful_progress(spark, folder)
        rows = {
            "pyspark (field by field)": _time(lambda: StreamingQueryProgress.fromJObject(jprogress), args.repeat),
            "project (its JSON, `common.listener.progress_event`)": _time(lambda: progress_event(jprogress),
                                                                          args.repeat),
        }
    print("| conversion of one progress event | wall ms | Python CPU ms |")
    print("| --- | --- | --- |")
    for name, (wall, cpu) in rows.items():
        print(f"| {name} | {wall:.1f} | {cpu:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
