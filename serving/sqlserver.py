"""``lakehouse sql-server``: Spark's Thrift JDBC/ODBC server over the lake's tables.

The server's session registers every Delta table of the lake as ``<layer>.<table>`` (see
serving.catalog) at start and again every ``refresh`` seconds, so tables created later by the
streams become visible too. Connect with any HiveServer2 client, for example the beeline that
pyspark ships: ``beeline -u jdbc:hive2://127.0.0.1:10000 -e 'SELECT ...'``.
"""

from __future__ import annotations

import threading

from serving.catalog import register_tables
from common.settings import Settings, child_env


def serve(settings: Settings, port: int = 10000, host: str = "127.0.0.1", refresh: float = 30.0) -> int:
    from common.errors import StackError
    from common.clients import check_reachable, port_open

    check_reachable(settings, kafka=None)
    if port_open(host, port):
        raise StackError(f"port {port} is already in use; choose another with --port")
    from pyspark.sql import SparkSession

    from common.spark import configure, create_session

    builder = (configure(SparkSession.builder, settings, app_name="lakehouse-sql-server")
               .config("spark.hive.server2.thrift.port", str(port))
               .config("spark.hive.server2.thrift.bind.host", host)
               .config("spark.sql.hive.thriftServer.singleSession", "true"))
    spark = create_session(builder, settings)  # (no S3 key on the JVM's command line)
    spark.sparkContext.setLogLevel("WARN")
    tables = register_tables(spark, settings)
    jvm = spark.sparkContext._jvm
    jvm.org.apache.spark.sql.hive.thriftserver.HiveThriftServer2.startWithContext(spark._jsparkSession.sqlContext())
    n = sum(len(v) for v in tables.values())
    print(f"Thrift JDBC server on jdbc:hive2://{host}:{port} serving {n} tables "
          f"({', '.join(f'{k}: {len(v)}' for k, v in tables.items())}); Ctrl-C to stop", flush=True)
    stop = threading.Event()
    try:
        while not stop.wait(refresh):
            register_tables(spark, settings)
    except KeyboardInterrupt:
        pass
    spark.stop()
    return 0




def spark_sql_shell(settings: Settings, args: list[str]) -> int:
    """Run pyspark's ``spark-sql`` with the project's jars and settings and every lake table
    registered by name (an init file of CREATE TABLE ... LOCATION statements)."""
    import subprocess
    import tempfile
    from pathlib import Path

    import pyspark

    from serving.catalog import list_tables, registration_sql
    from common.spark import spark_properties, write_properties
    from common.clients import check_reachable

    check_reachable(settings, kafka=None)
    with tempfile.TemporaryDirectory(prefix="lakehouse-spark-sql-") as tmp:
        init = Path(tmp) / "init.sql"
        init.write_text("".join(f"{s};\n" for s in registration_sql(settings, list_tables(settings))))
        # The shell's Hive metastore lives and dies with this run: the lake is the catalog's source of
        # truth (a metastore kept in the working directory kept old names and locations across lakes).
        props = write_properties(Path(tmp) / "spark.conf", {
            **spark_properties(settings), "spark.sql.warehouse.dir": str(Path(tmp) / "warehouse"),
            "spark.hadoop.javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={tmp}/metastore_db;create=true"})
        shell = Path(pyspark.__file__).parent / "bin" / "spark-sql"
        cmd = [str(shell), "--properties-file", str(props), "--master", settings.spark_master, "-i", str(init), *args]
        return subprocess.call(cmd, env=child_env(SPARK_HOME=str(shell.parent.parent)))
