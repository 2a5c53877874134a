"""The ``spark-submit`` entry point: one stage, or all of them, in the Spark application that
spark-submit starts (any master: local, the standalone cluster, YARN, Kubernetes).

    spark-submit app/submit.py bronze|silver|gold|all [--trigger availableNow] [--sink console] [-v]

The same run as ``lakehouse run <stage>``: the runner walks the graph (``app.dataflow``) and starts
the stage's queries. The stages themselves have no entry point: they are the house's middle
floor, and a program is the top of it.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit, maybe from a checkout not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.runner import main_for_stage  # noqa: E402

if __name__ == "__main__":
    sys.exit(main_for_stage())
