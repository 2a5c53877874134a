"""What the load generator costs: its CPU per record building records alone (``generate``) and
sending them paced at ``--rate`` orders/s plus as many logs and metrics (``produce``, with its
ledger), so a volume benchmark can say how much of the 2 cores its producer takes.

    python -m bench.gencost [--rate 800] [--seconds 30]

Needs the stack up (Kafka); sends to fresh topics of its own.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.measure import cpu_seconds
from bench.run import fresh
from bench.soak import FAULTS  # the soak's mix of duplicates, late and malformed records


def _cpu() -> float:
    return cpu_seconds(os.getpid())  # every thread: kafka-python's sender too


def main(argv: list[str] | None = None) -> int:
    from common.settings import Settings
    from devstack.generator import GenOptions, generate, produce

    p = argparse.ArgumentParser(prog="python -m bench.gencost", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=800.0, help="orders/s (plus as many logs and metrics)")
    p.add_argument("--seconds", type=float, default=30.0)
    args = p.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0:
        p.error("--rate and --seconds must be > 0")
    s = fresh(Settings.from_env(), f"gencost-{uuid.uuid4().hex[:6]}")
    count = int(args.rate * args.seconds)

    c0 = _cpu()
    records = sum(1 for _ in generate(s, GenOptions(topics=s.source_topics, count=count, seed=1,
                                                    first_order_id=1, **FAULTS)))
    built = _cpu() - c0
    print(f"generate: {records} records, {built:.2f} s CPU ({built / records * 1e6:.1f} us a record)")

    c1, t1 = _cpu(), time.monotonic()
    produce(s, GenOptions(topics=s.source_topics, count=count, rate=args.rate, seed=1, first_order_id=1,
                          ledger=Path(tempfile.mkdtemp(prefix="gencost-")) / "ledger.jsonl", progress=False,
                          **FAULTS), out=io.StringIO())
    wall, cpu = time.monotonic() - t1, _cpu() - c1
    print(f"produce at {args.rate:g} orders/s: {records} records in {wall:.1f} s, {cpu:.2f} s CPU = "
          f"{cpu / wall:.2f} of a core ({cpu / records * 1e6:.1f} us a record; "
          f"{records / cpu:.0f} records/s per core)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
