"""What one-shot runs of the whole pipeline cost in a warm session: wall time and the driver JVM's
CPU, per pair of runs on a fresh lake (150 records per topic with duplicates, late and malformed
records, then 50 more: a new lake's first run and a restarted one's). This is what most of the
test suite is made of, and the per-batch overhead a live stream pays on every trigger.

    python -m bench.runcost [--pairs 3] [--conf spark.some.setting=value ...]

A first pair warms the JVM and is not counted. ``--conf`` sets static Spark settings for the
session (an experiment: compare with a run without it, right after). Needs the stack up.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.measure import cpu_seconds
from bench.run import fresh


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.runcost", description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)

    from silver import customers
    from common import spark as session
    from app.runner import run
    from common.settings import Settings
    from devstack.generator import GenOptions, produce

    for item in args.conf:
        key, _, value = item.partition("=")
        session.STATIC_CONF[key] = value
    base = Settings.from_env()
    spark = session.get_spark(base, app_name="bench-runcost")
    jvm_pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    run_id = uuid.uuid4().hex[:6]
    folder = Path(tempfile.mkdtemp(prefix="runcost-"))

    def pair(n: int) -> tuple[float, float]:
        lake = fresh(base, f"runcost-{run_id}-{n}")
        customers.load(spark, lake)
        t0, c0 = time.monotonic(), cpu_seconds(jvm_pid)
        for count, seed in ((150, 1), (50, 2)):
            produce(lake, GenOptions(topics=lake.source_topics, count=count, seed=seed, ledger=folder / f"{n}.jsonl",
                                     progress=False, duplicate_pct=10, late_pct=5, malformed_pct=5))
            run(("bronze", "silver", "gold"), lake, "availableNow", spark=spark)
        return time.monotonic() - t0, cpu_seconds(jvm_pid) - c0

    pair(0)
    results = [pair(n) for n in range(1, args.pairs + 1)]
    for n, (wall, cpu) in enumerate(results, 1):
        print(f"pair {n}: {wall:.1f} s wall, {cpu:.1f} s of the JVM's CPU")
    walls = sorted(w for w, _ in results)
    cpus = sorted(c for _, c in results)
    print(f"median: {walls[len(walls) // 2]:.1f} s wall, {cpus[len(cpus) // 2]:.1f} s CPU"
          f"{' with ' + ', '.join(args.conf) if args.conf else ''}")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
