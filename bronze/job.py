"""Bronze job: one streaming query per topic, Kafka -> Delta ``bronze.<topic>``.

    spark-submit bronze/job.py [--trigger availableNow] [--sink console]
    lakehouse run bronze [--trigger ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bronze.transforms import PARTITION_COLUMNS, to_bronze  # noqa: E402
from common import streams  # noqa: E402
from common.settings import Settings  # noqa: E402


def start(spark, settings: Settings, options: streams.StreamOptions) -> list:
    queries = []
    for topic in settings.source_topics:
        table = settings.bronze_table_for(topic)
        df = to_bronze(streams.read_kafka(spark, settings, [topic]))
        queries.append(streams.start(
            df, name=f"bronze_{table}", checkpoint=settings.checkpoint_path("bronze", table),
            path=settings.table_path("bronze", table), options=options, partition_by=PARTITION_COLUMNS))
    return queries


if __name__ == "__main__":
    from common.runner import main_for_stage

    sys.exit(main_for_stage("bronze"))
