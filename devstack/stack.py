"""The embedded local stack: a real Apache Kafka broker (KRaft) and a real MinIO server.

No Docker: Kafka runs from its Maven Central artifacts with the machine's Java, MinIO is built
from source with ``go install``. Data, logs and pids live under ``settings.stack_dir``;
``up`` is idempotent, ``down`` stops only processes whose pid files ``up`` wrote.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from common import jars, versions
from common.clients import kafka_admin, minio_client, pid_alive, port_open
from common.errors import SetupError, StackError
from common.settings import Settings, child_env
from devstack import gotools


@dataclass
class ServiceStatus:
    name: str
    address: str
    pid: int | None
    healthy: bool
    detail: str

    def line(self) -> str:
        state = "healthy" if self.healthy else ("running, not ready" if self.pid else "stopped")
        pid = f"pid {self.pid}" if self.pid else "-"
        return f"{self.name:<7} {self.address:<22} {pid:<12} {state:<18} {self.detail}"


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.25) -> None:
    """Poll ``condition`` until true or raise StackError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64. Like Kafka's own Uuid, never one that
    starts with '-', which the storage tool's argument parser would take for an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class Stack:
    def __init__(self, settings: Settings):
        self.s = settings
        self.root = Path(settings.stack_dir)
        self.logs = self.root / "logs"
        self.run = self.root / "run"

    # ---- helpers --------------------------------------------------------------------------
    def _pidfile(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        f = self._pidfile(name)
        if not f.exists():
            return None
        try:
            pid = int(f.read_text().strip())
        except ValueError:
            return None
        return pid if pid_alive(pid) else None

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> int:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.run.mkdir(parents=True, exist_ok=True)
        out = open(self.logs / f"{name}.out", "ab")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env(**(env or {})), start_new_session=True, cwd=self.root)
        self._pidfile(name).write_text(str(proc.pid))
        return proc.pid

    def _check_port_free(self, name: str, port: int, setting: str) -> None:
        if port_open("127.0.0.1", port):
            raise StackError(f"port {port} for {name} is already in use by another process; stop it or "
                             f"choose another port with {setting}")

    # ---- MinIO ----------------------------------------------------------------------------
    @property
    def minio_binary(self) -> Path:
        return gotools.path("minio")

    def build_minio(self) -> Path:
        return gotools.ensure("minio")

    def _minio_health(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.s.s3_endpoint.rstrip('/')}/minio/health/live", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def _start_minio(self) -> None:
        if self.pid("minio"):
            return
        binary = self.build_minio()
        self._check_port_free("minio", self.s.s3_port, "LAKEHOUSE_S3_ENDPOINT")
        self._check_port_free("minio console", self.s.minio_console_port, "LAKEHOUSE_MINIO_CONSOLE_PORT")
        data = self.root / "minio-data"
        data.mkdir(parents=True, exist_ok=True)
        self._spawn("minio", [str(binary), "server", str(data), "--quiet",
                              "--address", f"127.0.0.1:{self.s.s3_port}",
                              "--console-address", f"127.0.0.1:{self.s.minio_console_port}"],
                    env={"MINIO_ROOT_USER": self.s.s3_access_key, "MINIO_ROOT_PASSWORD": self.s.s3_secret_key,
                         "MINIO_BROWSER": "on", "MINIO_UPDATE": "off"})

    def ensure_bucket(self) -> None:
        client = minio_client(self.s)
        if not client.bucket_exists(self.s.bucket):
            client.make_bucket(self.s.bucket)

    # ---- Kafka ----------------------------------------------------------------------------
    def _kafka_config(self) -> Path:
        cfg = self.root / "kafka" / "server.properties"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        port, cport = self.s.kafka_port, self.s.kafka_controller_port
        cfg.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{cport}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={self.root / 'kafka' / 'data'}",
            f"num.partitions={self.s.topic_partitions}",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=3",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "log.retention.hours=168",
            "",
        ]))
        log4j = self.root / "kafka" / "log4j2.properties"
        log4j.write_text("\n".join([
            "status = warn",
            "appender.file.type = File",
            "appender.file.name = FILE",
            f"appender.file.fileName = {self.logs / 'kafka-server.log'}",
            "appender.file.layout.type = PatternLayout",
            "appender.file.layout.pattern = [%d] %p %m (%c)%n",
            "rootLogger.level = INFO",
            "rootLogger.appenderRef.file.ref = FILE",
            "logger.kafka.name = org.apache.kafka",
            "logger.kafka.level = INFO",
            "",
        ]))
        return cfg

    def _java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise SetupError("Java is not on PATH: install a JDK 17 (apt-get install openjdk-17-jdk-headless)")
        return java

    def _kafka_cmd(self, main: str, *args: str) -> list[str]:
        classpath = ":".join(str(j) for j in jars.fetch("kafka", quiet=True))
        return [self._java(), "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.root / 'kafka' / 'log4j2.properties'}",
                "-cp", classpath, main, *args]

    def _start_kafka(self) -> None:
        if self.pid("kafka"):
            return
        self._check_port_free("kafka", self.s.kafka_port, "LAKEHOUSE_KAFKA_BOOTSTRAP_SERVERS")
        self._check_port_free("kafka controller", self.s.kafka_controller_port,
                              "LAKEHOUSE_KAFKA_CONTROLLER_PORT")
        cfg = self._kafka_config()
        if not (self.root / "kafka" / "data" / "meta.properties").exists():
            cluster_id = new_cluster_id()
            proc = subprocess.run(self._kafka_cmd("kafka.tools.StorageTool", "format", "-t", cluster_id,
                                                  "-c", str(cfg)), capture_output=True, text=True)
            if proc.returncode != 0:
                raise StackError(f"formatting Kafka storage failed: {(proc.stdout + proc.stderr).strip()[-300:]}")
        self._spawn("kafka", self._kafka_cmd("kafka.Kafka", str(cfg)))

    def _kafka_health(self) -> bool:
        if not port_open("127.0.0.1", self.s.kafka_port):
            return False
        try:
            admin = kafka_admin(self.s, timeout_ms=2000)
        except Exception:
            return False
        try:
            admin.list_topics()
            return True
        except Exception:
            return False
        finally:
            admin.close()

    def ensure_topics(self) -> None:
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = kafka_admin(self.s)
        try:
            existing = set(admin.list_topics())
            wanted = [t for t in (*self.s.source_topics, self.s.topic_enriched) if t not in existing]
            if wanted:
                try:
                    admin.create_topics([NewTopic(t, self.s.topic_partitions, 1) for t in wanted])
                except TopicAlreadyExistsError:
                    pass
                # created is not yet listed: a broker that has just started answers metadata requests
                # before it has caught up, and the caller's own check would find no such topic
                wait_until(lambda: set(wanted) <= set(admin.list_topics()), 30, f"Kafka to list {', '.join(wanted)}")
        finally:
            admin.close()

    # ---- public ---------------------------------------------------------------------------
    def up(self, timeout: float = 90) -> list[ServiceStatus]:
        self._start_minio()
        self._start_kafka()
        wait_until(lambda: self._exited_check("minio") or self._minio_health(), timeout, "MinIO to become healthy")
        wait_until(lambda: self._exited_check("kafka") or self._kafka_health(), timeout, "Kafka to become healthy")
        self.ensure_bucket()
        self.ensure_topics()
        return self.status()

    def _exited_check(self, name: str) -> bool:
        """Raise if a service died during start-up (instead of waiting for the timeout)."""
        if self.pid(name) is None:
            log = self.logs / f"{name}.out"
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise StackError(f"{name} exited during start-up ({tail[0] if tail else 'no output'}); "
                             f"see {log}")
        return False

    def down(self, timeout: float = 30) -> list[str]:
        stopped = []
        for name in ("kafka", "minio"):
            pid = self.pid(name)
            if pid:
                os.killpg(pid, signal.SIGTERM)
                try:
                    wait_until(lambda: not pid_alive(pid), timeout, f"{name} to stop")
                except StackError:
                    os.killpg(pid, signal.SIGKILL)
                    wait_until(lambda: not pid_alive(pid), 10, f"{name} to die")
                stopped.append(name)
            self._pidfile(name).unlink(missing_ok=True)
        return stopped

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to one service (fault-injection tests)."""
        pid = self.pid(name)
        if pid:
            os.killpg(pid, sig)
            wait_until(lambda: not pid_alive(pid), 30, f"{name} to stop")

    def status(self) -> list[ServiceStatus]:
        kpid, mpid = self.pid("kafka"), self.pid("minio")
        k_ok = bool(kpid) and self._kafka_health()
        m_ok = bool(mpid) and self._minio_health()
        return [
            ServiceStatus("kafka", self.s.kafka_bootstrap_servers, kpid, k_ok,
                          f"KRaft, Kafka {versions.KAFKA_VERSION}, controller :{self.s.kafka_controller_port}"),
            ServiceStatus("minio", self.s.s3_endpoint.removeprefix("http://"), mpid, m_ok,
                          f"bucket {self.s.bucket}, console :{self.s.minio_console_port}"),
        ]
