"""Bronze job: one streaming query per topic, Kafka -> Delta ``bronze.<topic>``.

    spark-submit bronze/job.py [--trigger availableNow] [--sink console]
    lakehouse run bronze [--trigger ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bronze.transforms import KAFKA_SCHEMA, PARTITION_COLUMNS, to_bronze  # noqa: E402
from common import streams  # noqa: E402
from common.settings import Settings  # noqa: E402
from common.tables import ensure_table  # noqa: E402

NOT_NULL = ("topic", "partition", "offset")


def ensure_tables(spark, settings: Settings) -> None:
    """Create the bronze tables up front, so silver can start streaming from them at once."""
    empty = to_bronze(spark.createDataFrame([], KAFKA_SCHEMA))
    for topic in settings.source_topics:
        ensure_table(spark, settings.table_path("bronze", settings.bronze_table_for(topic)), empty,
                     partition_by=PARTITION_COLUMNS, not_null=NOT_NULL)


def start(spark, settings: Settings, options: streams.StreamOptions) -> list:
    sources = {topic: streams.read_kafka(spark, settings, [topic]) for topic in settings.source_topics}
    if options.sink == "delta":
        ensure_tables(spark, settings)
    specs = []
    for topic, source in sources.items():
        table = settings.bronze_table_for(topic)
        specs.append(dict(df=to_bronze(source), name=f"bronze_{table}", options=options,
                          checkpoint=settings.checkpoint_path("bronze", table), path=settings.table_path("bronze", table),
                          partition_by=PARTITION_COLUMNS, signature={"topic": topic}))
    return streams.start_all(specs)


if __name__ == "__main__":
    from common.runner import main_for_stage

    sys.exit(main_for_stage("bronze"))
