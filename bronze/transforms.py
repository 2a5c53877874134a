"""Bronze transforms: Kafka records as received, plus ingestion time. Never parses, never drops."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (ArrayType, BinaryType, IntegerType, LongType, StringType, StructField, StructType,
                               TimestampType)

# The schema of Spark's Kafka source with includeHeaders=true.
KAFKA_SCHEMA = StructType([
    StructField("key", BinaryType()), StructField("value", BinaryType()), StructField("topic", StringType()),
    StructField("partition", IntegerType()), StructField("offset", LongType()),
    StructField("timestamp", TimestampType()), StructField("timestampType", IntegerType()),
    StructField("headers", ArrayType(StructType([StructField("key", StringType()),
                                                  StructField("value", BinaryType())]))),
])

BRONZE_COLUMNS = ("key", "value", "topic", "partition", "offset", "timestamp", "timestampType",
                  "headers", "ingest_time", "ingest_date")
PARTITION_COLUMNS = ("ingest_date",)


def to_bronze(kafka_df: DataFrame) -> DataFrame:
    """Kafka source rows -> bronze rows: key/value bytes unchanged, coordinates, ingestion time."""
    return (kafka_df
            .withColumn("ingest_time", F.current_timestamp())
            .withColumn("ingest_date", F.to_date("ingest_time"))
            .select(*BRONZE_COLUMNS))
