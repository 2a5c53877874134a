"""The platform against the real components: Kafka (KRaft), MinIO, Delta, Spark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from common import jars
from common.clients import kafka_producer, minio_client, port_open
from common.settings import s3_location
from common.streams import kafka_options
from devstack.stack import Stack, wait_until
from tests.conftest import ROOT, settings_env
from tests.helpers import read_topic

pytestmark = pytest.mark.stack


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_stack_restart_keeps_data(lake, tmp_path):
    """A stack of its own (its folder and free ports): the shared stack serves the other tests,
    which may be running meanwhile (make test runs them side by side)."""
    kafka_port, s3_port = _free_port(), _free_port()
    own = lake.with_overrides(stack_dir=str(tmp_path / "stack"), kafka_bootstrap_servers=f"127.0.0.1:{kafka_port}",
                              kafka_controller_port=_free_port(), s3_endpoint=f"http://127.0.0.1:{s3_port}",
                              minio_console_port=_free_port())
    stack = Stack(own)
    try:
        assert all(s.healthy for s in stack.up())
        topic = own.topic_orders
        producer = kafka_producer(own, "tests-restart")
        producer.send(topic, key=b"k", value=b"before-restart").get(timeout=10)
        producer.close()
        client = minio_client(own)
        obj = f"tests/marker-{uuid.uuid4().hex}"
        import io

        bucket = own.zone_bucket("bronze")
        client.put_object(bucket, obj, io.BytesIO(b"kept"), 4)

        stopped = stack.down()
        assert set(stopped) == {"kafka", "minio"}
        assert not any(s.pid for s in stack.status())
        assert not port_open("127.0.0.1", kafka_port) and not port_open("127.0.0.1", s3_port)
        stack.up()
        stack.up()  # idempotent: nothing started twice
        assert all(s.healthy for s in stack.status())

        assert client.get_object(bucket, obj).read() == b"kept"
        assert [m.value for m in read_topic(own, topic)] == [b"before-restart"]
    finally:
        stack.down()


def test_the_compose_broker_and_its_init_serve_each_role_as_the_local_stack_does(lake, tmp_path):
    """docker-compose's ``kafka`` and ``kafka-init`` services, run here as the processes they are
    (``lakehouse stack kafka``: the local stack's broker in the foreground, on every interface;
    ``lakehouse setup kafka``: the roles' users, ACLs and topics): the producer's records reach the
    reader, bronze may not write an input topic, no password is on a command line."""
    import signal

    from kafka.errors import KafkaError

    from tests.helpers import command_lines_with

    if not lake.kafka_sasl:
        pytest.skip("Kafka without SASL (LAKEHOUSE_KAFKA_SECURITY_PROTOCOL=PLAINTEXT)")
    port = _free_port()
    own = lake.with_overrides(stack_dir=str(tmp_path / "stack"), kafka_bootstrap_servers=f"127.0.0.1:{port}",
                              kafka_controller_port=_free_port())
    env = settings_env(own)
    log = tmp_path / "broker.log"
    broker = subprocess.Popen([sys.executable, "-m", "app.cli", "stack", "kafka"], env=env, cwd=ROOT,
                              stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: broker.poll() is not None or Stack(own)._kafka_health(), 90, "the compose broker")
        assert broker.poll() is None, log.read_text()[-2000:]
        assert f"listeners=SASL_PLAINTEXT://0.0.0.0:{port}," in (tmp_path / "stack" / "kafka" / "server.properties").read_text()
        init = subprocess.run([sys.executable, "-m", "app.cli", "setup", "kafka"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert init.returncode == 0, init.stderr[-2000:]
        producer = kafka_producer(own, "tests-compose")
        try:
            producer.send(own.topic_orders, b"via-compose").get(timeout=10)
        finally:
            producer.close(timeout=5)
        assert [m.value for m in read_topic(own, own.topic_orders)] == [b"via-compose"]
        bronze = kafka_producer(own, "tests-compose", role="bronze", max_block_ms=10_000)
        try:
            with pytest.raises(KafkaError, match="AuthorizationFailed"):
                bronze.send(own.topic_logs, b"not allowed").get(timeout=10)
        finally:
            bronze.close(timeout=5)
        for role in ("admin", "producer", "bronze", "gold", "reader"):
            assert not command_lines_with(own.kafka_identity(role)[1]), role
    finally:
        os.killpg(broker.pid, signal.SIGTERM)
        broker.wait(timeout=60)


def test_port_in_use_is_one_line(base_settings, stack, tmp_path):
    other = base_settings.with_overrides(stack_dir=str(tmp_path))  # same ports, different stack
    from common.errors import StackError

    with pytest.raises(StackError, match=r"port 9000 for minio is already in use.*LAKEHOUSE_S3_ENDPOINT"):
        Stack(other).up()


def test_delta_roundtrip_on_minio(spark, lake):
    path = lake.table_path("bronze", "roundtrip")
    rows = [(i, f"v{i}") for i in range(100)]
    spark.createDataFrame(rows, "id INT, v STRING").write.format("delta").save(path)
    back = sorted(tuple(r) for r in spark.read.format("delta").load(path).collect())
    assert back == rows
    bucket, prefix = s3_location(path + "/_delta_log/")
    names = [o.object_name for o in minio_client(lake).list_objects(bucket, prefix=prefix + "/")]
    assert any(n.endswith("00000000000000000000.json") for n in names), names


def test_kafka_roundtrip_through_spark(spark, lake):
    producer = kafka_producer(lake, "tests-roundtrip", acks="all")
    sent = {f"key-{i}": json.dumps({"n": i}) for i in range(50)}
    for k, v in sent.items():
        producer.send(lake.topic_metrics, key=k.encode(), value=v.encode())
    producer.flush()
    producer.close()
    df = (spark.read.format("kafka").options(**kafka_options(lake, role="reader"))
          .option("subscribe", lake.topic_metrics).option("startingOffsets", "earliest").load()
          .selectExpr("CAST(key AS STRING) k", "CAST(value AS STRING) v", "partition", "offset"))
    got = {r.k: r.v for r in df.collect()}
    assert got == sent
    assert df.select("partition").distinct().count() == lake.topic_partitions


def test_jar_cache_is_pinned_and_missing_cache_is_one_line(tmp_path, monkeypatch):
    spark_jars = {p.name for p in jars.jars("spark")}
    assert any(n.startswith("delta-spark_4.1_2.13-") for n in spark_jars)
    assert any(n.startswith("spark-sql-kafka-0-10_2.13-") for n in spark_jars)
    pyspark_hadoop = next(jars.pyspark_jars_dir().glob("hadoop-client-api-*.jar")).name
    hadoop_version = pyspark_hadoop.removeprefix("hadoop-client-api-").removesuffix(".jar")
    assert f"hadoop-aws-{hadoop_version}.jar" in spark_jars
    monkeypatch.setenv("LAKEHOUSE_CACHE_DIR", str(tmp_path))
    from common.errors import SetupError

    with pytest.raises(SetupError, match=r"jar cache .* is missing or out of date: run `lakehouse setup jars`"):
        jars.jars("spark")


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def _alive_workers(web_port: int) -> int:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/json/", timeout=2) as r:
            return int(json.loads(r.read()).get("aliveworkers", 0))
    except OSError:
        return 0


@pytest.mark.cluster
def test_same_job_on_standalone_cluster(lake, tmp_path):
    """A master and a worker started with spark-class; the job is submitted with spark-submit."""
    home = _spark_home()
    env = {**settings_env(lake), "SPARK_HOME": str(home), "SPARK_LOG_DIR": str(tmp_path / "logs"),
           "SPARK_CONF_DIR": str(ROOT / ".cache" / "spark-conf"), "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    port, web = 17077, 18080
    master = subprocess.Popen([str(home / "bin" / "spark-class"), "org.apache.spark.deploy.master.Master",
                               "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(web)],
                              env=env, stdout=open(tmp_path / "master.log", "w"), stderr=subprocess.STDOUT)
    worker = None
    try:
        wait_until(lambda: port_open("127.0.0.1", port), 60, "the Spark master")
        worker = subprocess.Popen([str(home / "bin" / "spark-class"), "org.apache.spark.deploy.worker.Worker",
                                   "--host", "127.0.0.1", "--cores", "2", "--memory", "2g", "--webui-port", "18081",
                                   f"spark://127.0.0.1:{port}"],
                                  env=env, stdout=open(tmp_path / "worker.log", "w"), stderr=subprocess.STDOUT)
        wait_until(lambda: _alive_workers(web) >= 1, 90, "the worker to register with the master")
        out = tmp_path / "result.json"
        proc = subprocess.run(
            [str(home / "bin" / "spark-submit"), "--master", f"spark://127.0.0.1:{port}",
             "--conf", "spark.executor.memory=1g", str(ROOT / "tests" / "jobs" / "cluster_job.py"), str(out)],
            env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(out.read_text())
        assert result["master"] == f"spark://127.0.0.1:{port}"
        assert result["delta_rows"] == 1000 and result["delta_sum"] == sum(range(1000))
        assert result["executors"] >= 1  # work ran on the worker's executor, not in the driver
    finally:
        for p in (worker, master):
            if p is not None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()


def test_unreachable_endpoints_fail_fast(lake):
    env = {**settings_env(lake), "LAKEHOUSE_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "app.cli", "produce", "--count", "1"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: no Kafka broker answers at 127.0.0.1:1; start one (`lakehouse stack up`) "
                                   "or fix LAKEHOUSE_KAFKA_BOOTSTRAP_SERVERS")
    assert time.monotonic() - t0 < 30
    env = {**settings_env(lake), "LAKEHOUSE_S3_ENDPOINT": "http://127.0.0.1:1"}
    proc = subprocess.run([sys.executable, "-m", "app.cli", "run", "bronze", "--trigger", "availableNow"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: the S3 endpoint http://127.0.0.1:1 does not answer; start MinIO (`lakehouse stack up`) "
        "or fix LAKEHOUSE_S3_ENDPOINT")


def test_unknown_topic_and_bad_trigger_fail_before_start(lake):
    env = {**settings_env(lake), "LAKEHOUSE_TOPIC_METRICS": "no-such-topic"}
    proc = subprocess.run([sys.executable, "-m", "app.cli", "run", "bronze", "--trigger", "availableNow"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error: Kafka topic 'no-such-topic' does not exist" in proc.stderr.strip().splitlines()[-1]
    proc = subprocess.run([sys.executable, "-m", "app.cli", "run", "bronze", "--trigger", "continuous=1 second"],
                          env=settings_env(lake), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: trigger continuous=1 second is not supported for query of this run (sink delta)")
