"""The customer dimension ``silver.customers``, loaded from a CSV file (``lakehouse customers load``).

Loading upserts by customer_id (MERGE), so a changed row replaces the old one and a reload is
harmless; gold's enrichment reads the table at every micro-batch and sees the change from its
next batch on.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pyspark.sql.types import StringType, StructField, StructType

from common.errors import SettingsError
from common.settings import Settings

DEFAULT_FILE = Path(__file__).resolve().parent / "data" / "customers.csv"
CUSTOMERS_SCHEMA = StructType([StructField("customer_id", StringType(), False), StructField("nom", StringType()),
                               StructField("ville", StringType()), StructField("segment", StringType())])
COLUMNS = tuple(f.name for f in CUSTOMERS_SCHEMA.fields)


def read_file(path: Path) -> list[tuple]:
    if not Path(path).exists():
        raise SettingsError(f"customers file {path} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise SettingsError(f"customers file {path} lacks column(s) {', '.join(sorted(missing))}; "
                                f"expected header: {','.join(COLUMNS)}")
        rows = [tuple(r[c].strip() or None for c in COLUMNS) for r in reader]
    bad = [i for i, r in enumerate(rows, 2) if not r[0]]
    if bad:
        raise SettingsError(f"customers file {path}: line {bad[0]} has no customer_id")
    return rows


def load(spark, settings: Settings, path: Path = DEFAULT_FILE) -> int:
    from delta.tables import DeltaTable

    from common.tables import ensure_table

    rows = read_file(path)
    target = settings.table_path("silver", "customers")
    ensure_table(spark, target, spark.createDataFrame([], CUSTOMERS_SCHEMA), not_null=("customer_id",))
    updates = spark.createDataFrame(rows, CUSTOMERS_SCHEMA)
    (DeltaTable.forPath(spark, target).alias("t").merge(updates.alias("s"), "t.customer_id = s.customer_id")
     .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
    return len(rows)
