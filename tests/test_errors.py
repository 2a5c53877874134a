"""What a user sees when something is wrong: one line on stderr naming the setting (or the table they
meant), a non-zero exit, never a secret, never a stack trace. The cases that fail before Spark starts
run the CLI as a user would, a process each (a second or two: no JVM), and so do those about what a
fresh process prints (a JVM's start-up, the libraries' imports); the others run the command's code
in the test's process (``tests.helpers.lakehouse``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, settings_env
from tests.helpers import lakehouse as in_process
from tests.helpers import user_lines

WRONG_SECRET = "not-the-secret-4f2b9c"

pytestmark = pytest.mark.stack


def lakehouse(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, *expected: str, secret: str | None = None) -> None:
    lines = user_lines(proc.stderr)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert 1 <= len(lines) <= 2, proc.stderr[-3000:]
    assert lines[-1].startswith("error: "), lines
    for text in expected:
        assert text in lines[-1], lines[-1]
    assert "Traceback" not in proc.stderr and "\tat " not in proc.stderr
    if secret:
        assert secret not in proc.stdout + proc.stderr


COMMANDS = {  # each command and the S3 role whose key it holds
    "sql": (("sql", "SELECT 1"), "READER"),
    "run": (("run", "bronze", "--trigger", "availableNow"), "BRONZE"),
    "dq": (("dq",), "QUALITY"),
    "maintain": (("maintain",), "ADMIN"),
    "customers": (("customers", "load"), "CUSTOMERS"),
    "status": (("status",), "READER"),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_wrong_s3_secret_is_one_line_naming_the_setting(lake, command):
    args, role = COMMANDS[command]
    suffix = f"_{role}" if getattr(lake, f"s3_access_key_{role.lower()}") else ""
    env = {**settings_env(lake), f"LAKEHOUSE_S3_SECRET_KEY{suffix}": WRONG_SECRET}
    proc = lakehouse(env, *args)
    assert_one_line_error(proc, f"LAKEHOUSE_S3_SECRET_KEY{suffix}", secret=WRONG_SECRET)


def test_unknown_s3_access_key_and_missing_bucket(lake):
    suffix = "_READER" if lake.s3_access_key_reader else ""
    env = {**settings_env(lake), f"LAKEHOUSE_S3_ACCESS_KEY{suffix}": "nobody-we-know"}
    assert_one_line_error(lakehouse(env, "sql", "SELECT 1"), f"LAKEHOUSE_S3_ACCESS_KEY{suffix}")
    env = {**settings_env(lake), "LAKEHOUSE_LAKE_ROOT": "s3a://no-such-bucket-for-tests/lake"}
    assert_one_line_error(lakehouse(env, "run", "silver", "--trigger", "availableNow"),
                          "no-such-bucket-for-tests", "does not exist", "LAKEHOUSE_LAKE_ROOT")


def test_each_s3_role_may_do_what_its_policy_says_and_nothing_more(lake):
    """The local stack's MinIO policies (``devstack.stack.s3_policy``), tried with each role's own
    key in each zone of the test's lake: bronze writes only bronze; silver reads bronze and writes
    silver; gold reads silver and writes gold; the customer loader writes only the customer table;
    the quality run writes only ops; the reader writes nowhere."""
    import io

    from common.clients import minio_client
    from common.settings import S3_RIGHTS, ZONES, s3_location

    if lake.lake_layout == "single" or not lake.s3_access_key_reader:
        pytest.skip("the lake is not split per role (LAKEHOUSE_LAKE_LAYOUT=single or one key for all)")

    def can(client, bucket: str, key: str) -> tuple[bool, bool]:
        try:
            next(iter(client.list_objects(bucket, prefix=key)), None)
            read = True
        except Exception:  # noqa: BLE001 - AccessDenied
            read = False
        try:
            client.put_object(bucket, key, io.BytesIO(b"probe"), 5)
            client.remove_object(bucket, key)
            return read, True
        except Exception:  # noqa: BLE001 - AccessDenied
            return read, False

    seen, expected = {}, {}
    for role, rights in S3_RIGHTS.items():
        client = minio_client(lake, role=role)
        for zone in ZONES:
            bucket, key = s3_location(f"{lake.table_path(zone, 'probe')}/x")
            seen[role, zone] = can(client, bucket, key)
            expected[role, zone] = (rights.get(zone) is not None, rights.get(zone) == "write")
        bucket, key = s3_location(lake.table_path("silver", "customers") + "/probe")
        seen[role, "silver.customers"] = can(client, bucket, key)[1]
        expected[role, "silver.customers"] = rights.get("silver") in ("write", "customers")
    assert seen == expected
    assert not any(seen["reader", zone][1] for zone in ZONES)


def test_a_key_beyond_its_role_is_refused_in_one_line_naming_the_role_and_the_path(lake):
    """Silver run with bronze's key: refused before Spark starts (it may not even list silver).
    The customer loader with the reader's key (it may list silver, not write): S3 refuses the
    write, and the line names the role, the variable of its key and the object refused."""
    if lake.lake_layout == "single" or not lake.s3_access_key_reader:
        pytest.skip("the lake is not split per role (LAKEHOUSE_LAKE_LAYOUT=single or one key for all)")
    bronze = {"LAKEHOUSE_S3_ACCESS_KEY_SILVER": lake.s3_access_key_bronze,
              "LAKEHOUSE_S3_SECRET_KEY_SILVER": lake.s3_secret_key_bronze}
    proc = lakehouse({**settings_env(lake), **bronze}, "run", "silver", "--trigger", "availableNow")
    assert_one_line_error(proc, "LAKEHOUSE_S3_ACCESS_KEY_SILVER (S3 role silver) may not list "
                          f"s3://{lake.zone_bucket('silver')}/", secret=lake.s3_secret_key_bronze)
    assert proc.returncode == 2
    reader = {"LAKEHOUSE_S3_ACCESS_KEY_CUSTOMERS": lake.s3_access_key_reader,
              "LAKEHOUSE_S3_SECRET_KEY_CUSTOMERS": lake.s3_secret_key_reader}
    proc = lakehouse({**settings_env(lake), **reader}, "customers", "load")
    assert_one_line_error(proc, "S3 denied access to " + lake.table_path("silver", "customers") + "/",
                          "to S3 role customers (the key in LAKEHOUSE_S3_ACCESS_KEY_CUSTOMERS)",
                          secret=lake.s3_secret_key_reader)


@pytest.mark.parametrize("args", [("run", "bronze", "--trigger", "availableNow"), ("peek", "metrics")])
def test_kafka_listener_that_refuses_is_one_line(lake, args):
    env = {**settings_env(lake), "LAKEHOUSE_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    assert_one_line_error(lakehouse(env, *args), "LAKEHOUSE_KAFKA_BOOTSTRAP_SERVERS")


def test_unknown_table_suggests_the_closest_names_without_a_java_stack(spark, lake, capfd):
    spark.createDataFrame([(1,)], "n INT").write.format("delta").save(lake.table_path("silver", "orders"))
    proc = in_process(lake, "sql", "SELECT * FROM silver.order", capfd=capfd)
    assert_one_line_error(proc, "silver.order does not exist", "did you mean silver.orders?")
    assert len("\n".join(user_lines(proc.stderr))) < 400, proc.stderr
    # a process of its own: a JVM's start-up prints nothing a user must read either
    ok = lakehouse(settings_env(lake), "sql", "SELECT count(*) AS n FROM silver.orders", "--format", "json")
    assert ok.returncode == 0 and user_lines(ok.stderr) == [], ok.stderr[-3000:]
    assert '"n": 1' in ok.stdout, ok.stdout


def test_verbose_brings_the_trace_back(lake):
    suffix = "_READER" if lake.s3_access_key_reader else ""
    env = {**settings_env(lake), f"LAKEHOUSE_S3_SECRET_KEY{suffix}": WRONG_SECRET}
    proc = lakehouse(env, "--verbose", "sql", "SELECT 1")
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    assert WRONG_SECRET not in proc.stdout + proc.stderr


@pytest.mark.xdist_group("gx")  # GX's one folder (.gx/): with the other tests that use it
def test_dq_prints_its_summary_first_and_no_library_noise(spark, lake, tmp_path):
    from app.runner import run
    from tests.helpers import produce_to

    produce_to(lake, tmp_path / "ledger.jsonl", 20, seed=3)
    run(("bronze",), lake, "availableNow", spark=spark)
    proc = lakehouse(settings_env(lake), "dq", "--layer", "bronze")  # a fresh process: its imports print nothing
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["TABLE", "EXPECTATIONS", "PASSED", "FAILED"]
    assert [line.split()[0] for line in lines[1:4]] == [f"bronze.{lake.bronze_table_for(t)}" for t in lake.source_topics]
    assert lines[4].startswith("15 passed, 0 failed expectations") and len(lines) == 5, proc.stdout
    assert user_lines(proc.stderr) == [], proc.stderr[-3000:]
    # the run is data: one row per expectation in ops.dq_results
    from serving.native import NativeLake

    results = NativeLake(lake).rows("ops.dq_results")
    assert len(results) == 15 and len({r["run_id"] for r in results}) == 1
    assert {r["layer"] for r in results} == {"bronze"} and all(r["success"] for r in results)
    assert {r["table_name"] for r in results} == {f"bronze.{lake.bronze_table_for(t)}" for t in lake.source_topics}


def test_kafka_refuses_a_wrong_password_a_client_without_sasl_and_a_role_beyond_its_acls(lake, capfd):
    """The local stack's Kafka takes SASL/SCRAM on its clients' listener and each role's ACLs
    (``devstack.stack.kafka_acls``): a wrong password, or a client without SASL, is one line naming
    the setting, before anything is sent; no role but the producer writes an input topic, none but
    gold the enriched topic, and what they tried is nowhere in Kafka."""
    from kafka.errors import KafkaError

    from common.clients import kafka_producer
    from tests.helpers import read_topic

    proc = in_process(lake, "produce", "--count", "5", capfd=capfd, env={"LAKEHOUSE_KAFKA_PASSWORD_PRODUCER": WRONG_SECRET})
    # (the line says "refused" when kafka-python logged the broker's refusal before its bootstrap
    # timed out, and names the protocol setting too when it did not: a loaded machine)
    assert_one_line_error(proc, "the producer identity 'lakehouse-producer'", "LAKEHOUSE_KAFKA_PASSWORD_PRODUCER",
                          secret=WRONG_SECRET)
    proc = in_process(lake, "peek", lake.topic_orders, capfd=capfd, env={"LAKEHOUSE_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"})
    assert_one_line_error(proc, "does not answer a PLAINTEXT client", "LAKEHOUSE_KAFKA_SECURITY_PROTOCOL")
    for role, topic in (("bronze", lake.topic_orders), ("gold", lake.topic_logs), ("reader", lake.topic_metrics),
                        ("producer", lake.topic_enriched), ("reader", lake.topic_enriched)):
        producer = kafka_producer(lake, "tests-acl", role=role, max_block_ms=10_000)
        try:
            with pytest.raises(KafkaError, match="AuthorizationFailed"):
                producer.send(topic, b"not allowed").get(timeout=10)
        finally:
            producer.close(timeout=5)
    for topic in (*lake.source_topics, lake.topic_enriched):
        assert read_topic(lake, topic, committed=False) == [], topic
    producer = kafka_producer(lake, "tests-acl")  # the producer's identity: its own topics only
    try:
        producer.send(lake.topic_orders, b"allowed").get(timeout=10)
    finally:
        producer.close(timeout=5)
    assert [m.value for m in read_topic(lake, lake.topic_orders)] == [b"allowed"]
