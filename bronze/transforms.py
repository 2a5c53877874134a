"""Bronze transforms: Kafka records as received, plus ingestion time. Never parses, never drops."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

BRONZE_COLUMNS = ("key", "value", "topic", "partition", "offset", "timestamp", "timestampType",
                  "headers", "ingest_time", "ingest_date")
PARTITION_COLUMNS = ("ingest_date",)


def to_bronze(kafka_df: DataFrame) -> DataFrame:
    """Kafka source rows -> bronze rows: key/value bytes unchanged, coordinates, ingestion time."""
    return (kafka_df
            .withColumn("ingest_time", F.current_timestamp())
            .withColumn("ingest_date", F.to_date("ingest_time"))
            .select(*BRONZE_COLUMNS))
