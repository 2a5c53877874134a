"""Every pinned version and Maven coordinate of the project, in one place.

Python packages are pinned in ``pyproject.toml`` (same numbers, see the comment there);
``tests/test_versions.py`` checks the two agree with what is installed.
"""

from __future__ import annotations

SCALA_BINARY = "2.13"
SPARK_VERSION = "4.1.3"  # newest 4.1 with its connector on Maven Central; great-expectations 1.24's spark extra caps pyspark < 4.2
SPARK_MAJOR_MINOR = ".".join(SPARK_VERSION.split(".")[:2])
# Maven Central carries delta-spark_4.1_2.13 up to 4.4.0 (4.4.1 is on PyPI only), so both pins say 4.4.0.
DELTA_VERSION = "4.4.0"
# hadoop-aws must match the Hadoop client bundled in pyspark's jars/ exactly.
HADOOP_VERSION = "3.4.2"
KAFKA_VERSION = "4.1.1"  # the local single-node KRaft broker
LOG4J_VERSION = "2.24.3"  # log4j2 backend for the broker (Kafka 4 logs through slf4j -> log4j2)
# MinIO community edition is built from source with `go install`; the Go proxy only knows
# pseudo-versions for it (its release tags are not semver). This one is RELEASE 2026-02-12.
MINIO_MODULE = "github.com/minio/minio"
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"
ACTIONLINT_MODULE = "github.com/rhysd/actionlint/cmd/actionlint"  # lints .github/workflows in the tests
ACTIONLINT_VERSION = "v1.7.12"

# JVM artifacts a Spark application of the lakehouse needs on top of pyspark's own jars/.
SPARK_PACKAGES: tuple[str, ...] = (
    f"io.delta:delta-spark_{SPARK_MAJOR_MINOR}_{SCALA_BINARY}:{DELTA_VERSION}",
    f"org.apache.spark:spark-sql-kafka-0-10_{SCALA_BINARY}:{SPARK_VERSION}",
    f"org.apache.hadoop:hadoop-aws:{HADOOP_VERSION}",
)

# Versions forced onto transitive dependencies (Maven dependencyManagement). Maven Central as
# reached here has no spark-token-provider-kafka-0-10 jar for any Spark 4.1 release (4.0.0 is
# the newest); the classes the connector uses from it (KafkaConfigUpdater, KafkaTokenUtil) are
# unchanged between 4.0 and 4.1, and tests/test_platform.py reads Kafka through it.
SPARK_PACKAGE_OVERRIDES: dict[str, str] = {
    f"org.apache.spark:spark-token-provider-kafka-0-10_{SCALA_BINARY}": "4.0.0",
}

# The Kafka broker and its logging backend, run with the machine's Java.
KAFKA_PACKAGES: tuple[str, ...] = (
    f"org.apache.kafka:kafka_{SCALA_BINARY}:{KAFKA_VERSION}",
    f"org.apache.logging.log4j:log4j-slf4j2-impl:{LOG4J_VERSION}",
    "org.slf4j:slf4j-api:2.0.17",  # log4j-slf4j2-impl needs slf4j 2; Kafka's pom brings 1.7
    f"org.apache.logging.log4j:log4j-core:{LOG4J_VERSION}",
)
