"""``python -m tests.jobs.crash_at <point> <lakehouse arguments>``: the lakehouse CLI, SIGKILLed
(its whole process group: the Python driver and its JVM) at ``point`` of the first micro-batch
that publishes enriched orders (``gold.publish.Publisher``), for the fault tests:

* ``before-commit``: the batch is in ``gold.orders_enriched``, its messages sent and flushed in an
  open Kafka transaction, which is not committed; the checkpoint does not have the batch;
* ``after-commit``: the transaction (messages and ledger) committed; the checkpoint does not have
  the batch.
"""

import os
import signal
import sys

from app import cli
from gold import publish

POINTS = ("before-commit", "after-commit")


def _kill(point: str) -> None:
    print(f"crash_at: SIGKILL of the process group at {point}", flush=True)
    os.killpg(os.getpgid(0), signal.SIGKILL)


def main() -> None:
    point, args = sys.argv[1], sys.argv[2:]
    if point not in POINTS:
        raise SystemExit(f"crash_at: point must be one of {', '.join(POINTS)}")
    commit = publish.Publisher._commit

    def crashing_commit(self) -> None:
        if point == "before-commit":
            _kill(point)
        commit(self)
        _kill(point)

    publish.Publisher._commit = crashing_commit
    sys.argv = ["lakehouse", *args]
    sys.exit(cli.main(args))


if __name__ == "__main__":
    main()
