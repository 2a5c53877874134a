"""What silver's parse costs per record: ``silver.transforms.classify`` (explicit schema, every
reason, rules, ``_rescued_data``) over a batch of generated records per source, against its peer in
the same session, a raw ``from_json`` of the same values with the same all-string schema (the least
any parse costs). No stack needed: the rows are made in memory and written to Spark's ``noop``
sink, so only the parse is timed.

    python -m bench.parse [--rows 45000] [--repeat 5] [--against <git rev>]

``--against`` also times the classify of another revision (loaded from git, same session): what a
change to the parse bought or cost, as a ratio measured side by side.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from common.settings import PROJECT_ROOT


def _values(kind: str, rows: int) -> list[str]:
    import random

    from devstack.generator import EventFactory, GenOptions

    opts = GenOptions(topics=(kind,), count=rows, malformed_pct=2)
    factory = EventFactory(kind, opts, random.Random(7), 1)
    now = datetime.now(timezone.utc)
    return [factory.next(now)["value"] for _ in range(rows)]


def _module_at(rev: str):
    """``silver/transforms.py`` of revision ``rev``, imported as its own module."""
    text = subprocess.run(["git", "show", f"{rev}:silver/transforms.py"], cwd=PROJECT_ROOT, check=True,
                          capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="bench-parse-")) / f"transforms_{rev[:8]}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.parse", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=45_000, help="records per source (default: a silver batch at 800/s)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--against", metavar="REV", help="also time classify of this git revision")
    args = p.parse_args(argv)

    from pyspark.sql import functions as F

    from bronze.transforms import KAFKA_SCHEMA, to_bronze
    from common.settings import Settings
    from common.spark import get_spark
    from silver import transforms as T

    spark = get_spark(Settings.from_env(), app_name="bench-parse")
    now = datetime.now()
    contenders = {"classify": T.classify}
    if args.against:
        contenders[f"classify@{args.against}"] = _module_at(args.against).classify
    print(f"{args.rows:,} records per source, median of {args.repeat} (after one warm-up)", file=sys.stderr)
    for kind in ("orders", "logs", "metrics"):
        rows = [(None, v.encode(), "t", i % 3, i, now, 0, []) for i, v in enumerate(_values(kind, args.rows))]
        bronze = to_bronze(spark.createDataFrame(rows, KAFKA_SCHEMA)).localCheckpoint()
        jobs = {"raw from_json (peer)": lambda: bronze.select(
            F.from_json(F.col("value").cast("string"), T.KINDS[kind].raw).alias("raw")).select("raw.*")}
        jobs.update({name: (lambda c=c: c(bronze, kind, 300)) for name, c in contenders.items()})
        times = {}
        for name, make in jobs.items():
            runs = []
            for i in range(args.repeat + 1):
                t0 = time.monotonic()
                make().write.format("noop").mode("overwrite").save()
                if i:
                    runs.append(time.monotonic() - t0)
            times[name] = statistics.median(runs)
        peer = times["raw from_json (peer)"]
        for name, t in times.items():
            print(f"{kind:<8} {name:<28} {t:6.2f} s  {t / peer:5.2f}x the peer")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
