"""Gold by name from other processes: `lakehouse sql`, the spark-sql shell and the Thrift JDBC
server return the same rows."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from common.clients import port_open
from devstack.stack import wait_until
from tests.conftest import ROOT, settings_env
from tests.helpers import command_lines_with, kill_hard, lakehouse

pytestmark = pytest.mark.stack
QUERY = "SELECT customer_id, nb_commandes FROM gold.customer_order_kpis ORDER BY customer_id"


def test_sql_cli_spark_sql_shell_and_thrift_server_return_the_same_rows(spark, lake, tmp_path, capfd):
    rows = [("CUST-001", 3), ("CUST-002", 1), ("CUST-007", 12)]
    final = [("CUST-001", 3, 15.5), ("CUST-002", 1, 1.0), ("CUST-007", 12, 99.0)]  # one row per window and customer
    (spark.createDataFrame(final, "customer_id string, nb_commandes long, total double")
     .selectExpr("TIMESTAMP '2026-01-18 10:00:00' AS window_start", "TIMESTAMP '2026-01-18 10:02:00' AS window_end",
                 "customer_id", "nb_commandes", "total AS total_ventes", "total AS max_commande")
     .write.format("delta").save(lake.table_path("gold", "customer_order_kpis")))
    cli = lakehouse(lake, "sql", "--format", "csv", QUERY, capfd=capfd)  # (in this process: its JVM is not the point)
    assert cli.returncode == 0, cli.stderr[-2000:]
    via_cli = [(r[0], int(r[1])) for r in list(csv.reader(io.StringIO(cli.stdout)))[1:]]
    assert via_cli == rows

    shell = subprocess.run([sys.executable, "-m", "app.cli", "spark-sql", "-S", "-e", QUERY],
                           env=settings_env(lake), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert shell.returncode == 0, shell.stderr[-2000:]
    via_shell = [(a, int(b)) for a, b in (ln.split("\t") for ln in shell.stdout.splitlines() if "\t" in ln)]
    assert via_shell == rows

    port = 10123
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "sql-server", "--port", str(port)],
                              env=settings_env(lake), cwd=ROOT, stdout=open(tmp_path / "thrift.log", "w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: "Thrift JDBC server on" in (tmp_path / "thrift.log").read_text() or server.poll() is not None,
                   180, "the Thrift server")
        assert server.poll() is None, (tmp_path / "thrift.log").read_text()[-2000:]
        assert port_open("127.0.0.1", port)
        for secret in (lake.s3_secret_key, lake.s3_identity("reader")[1]):  # (the server acts as the reader)
            assert not command_lines_with(secret), "S3 secret on a process's command line"
        import pyspark

        beeline = Path(pyspark.__file__).parent / "bin" / "beeline"
        out = subprocess.run([str(beeline), "-u", f"jdbc:hive2://127.0.0.1:{port}", "--silent=true",
                              "--outputformat=csv2", "-e", QUERY], capture_output=True, text=True, timeout=180)
        lines = [re.sub(r"^\d+: jdbc:\S+> ", "", ln) for ln in out.stdout.splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("WARNING")]
        got = [(r[0], int(r[1])) for r in list(csv.reader(lines))[1:]]
        assert got == rows, out.stdout + out.stderr[-1000:]
    finally:
        kill_hard(server)
