"""Submitted to a standalone cluster by tests/test_platform.py: Delta on MinIO through executors."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common.settings import get_settings  # noqa: E402
from common.spark import get_spark  # noqa: E402

settings = get_settings()
spark = get_spark(settings, app_name="lakehouse-cluster-test")
path = settings.table_path("bronze", "cluster_roundtrip")
spark.range(1000).repartition(4).write.format("delta").mode("overwrite").save(path)
df = spark.read.format("delta").load(path)
# executors registered with the driver (the driver itself is one more entry)
executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1
result = {"master": spark.sparkContext.master, "delta_rows": df.count(),
          "delta_sum": df.groupBy().sum("id").collect()[0][0], "executors": executors}
Path(sys.argv[1]).write_text(json.dumps(result))
spark.stop()
