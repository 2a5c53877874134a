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
from common.clients import double_quoted, jaas_config, kafka_admin, minio_client, pid_alive, port_open
from common.errors import SettingsError, SetupError, StackError
from common.settings import S3_ROLES, S3_RIGHTS, Settings, child_env
from common.spark import write_private
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


def s3_policy(settings: Settings, role: str) -> dict:
    """The MinIO (IAM) policy of S3 role ``role``: its rights (``S3_RIGHTS``) on each zone's bucket.
    S3A lists, reads, writes and deletes objects (a commit, a checkpoint file, a compaction, the
    log's clean-up) and uploads big files in parts; the customers role reads silver and writes
    only its table (``<prefix>/silver/customers/``)."""
    read = ["s3:GetObject"]
    write = read + ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
    statements = []
    for zone, right in S3_RIGHTS[role].items():
        bucket = settings.zone_bucket(zone)
        statements.append({"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation",
                                                          "s3:ListBucketMultipartUploads"],
                           "Resource": [f"arn:aws:s3:::{bucket}"]})
        statements.append({"Effect": "Allow", "Action": write if right == "write" else read,
                           "Resource": [f"arn:aws:s3:::{bucket}/*"]})
        if right == "customers":
            statements.append({"Effect": "Allow", "Action": write,
                               "Resource": [f"arn:aws:s3:::{bucket}/silver/customers/*",
                                            f"arn:aws:s3:::{bucket}/*/silver/customers/*"]})
    return {"Version": "2012-10-17", "Statement": statements}


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64. Like Kafka's own Uuid, never one that
    starts with '-', which the storage tool's argument parser would take for an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def kafka_acls(settings: Settings) -> list:
    """What each Kafka role may do on the local stack (the admin is a super user, beyond ACLs).
    Topic grants are PREFIXED by the configured names, so that topics scoped to a test or a
    benchmark (``Settings.with_topic_scope``: ``<topic>.<scope>``) are covered, and nothing else
    is: the producer writes the input topics, bronze reads them (as Spark's Kafka source, whose
    consumer groups are named ``spark-kafka-source-*``), gold writes the enriched topic in
    transactions (ids ``lakehouse:*``) whose ledger is a consumer group (``lakehouse-ledger:*``),
    the reader reads every topic. Nobody but the admin creates or deletes a topic (Kafka's
    operations and what they check: docs/security.html, "Authorization and ACLs")."""
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

    def grant(role: str, operation, kind, name: str, prefixed: bool = True):
        user = settings.kafka_identity(role)[0]
        pattern = ACLResourcePatternType.PREFIXED if prefixed else ACLResourcePatternType.LITERAL
        return ACL(f"User:{user}", "*", operation, ACLPermissionType.ALLOW, ResourcePattern(kind, name, pattern))

    inputs = settings.source_topics
    return [
        *(grant("producer", ACLOperation.WRITE, ResourceType.TOPIC, t) for t in inputs),
        *(grant("bronze", ACLOperation.READ, ResourceType.TOPIC, t) for t in inputs),
        grant("bronze", ACLOperation.READ, ResourceType.GROUP, "spark-kafka-source"),
        grant("gold", ACLOperation.WRITE, ResourceType.TOPIC, settings.topic_enriched),
        # the ledger's offset is committed on the topic it publishes to (TxnOffsetCommit checks READ)
        grant("gold", ACLOperation.READ, ResourceType.TOPIC, settings.topic_enriched),
        grant("gold", ACLOperation.WRITE, ResourceType.TRANSACTIONAL_ID, "lakehouse:"),
        grant("gold", ACLOperation.READ, ResourceType.GROUP, "lakehouse-ledger:"),
        grant("reader", ACLOperation.READ, ResourceType.TOPIC, "*", prefixed=False),
    ]


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
        if not (self.s.s3_access_key and self.s.s3_secret_key):
            raise SettingsError("the local stack's MinIO takes its root user from LAKEHOUSE_S3_ACCESS_KEY and "
                                "LAKEHOUSE_S3_SECRET_KEY: set both (LAKEHOUSE_ENV_FILE=local.env does)")
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

    def ensure_buckets(self) -> None:
        client = minio_client(self.s, **self._root)
        for bucket in self.s.buckets:
            if not client.bucket_exists(bucket):
                client.make_bucket(bucket)

    @property
    def _root(self) -> dict:
        """MinIO's root user is LAKEHOUSE_S3_ACCESS_KEY (the stack's own; the roles have theirs)."""
        return {"access_key": self.s.s3_access_key, "secret_key": self.s.s3_secret_key}

    def ensure_s3_identities(self) -> list[str]:
        """Create (or update) a MinIO user for every S3 role with a key of its own, with the policy
        of its rights (``s3_policy``), through MinIO's admin API. A role without its own key uses
        the root's, which may do anything."""
        from minio.credentials import StaticProvider
        from minio.error import MinioAdminException
        from minio.minioadmin import MinioAdmin

        if not self.s.s3_access_key:
            raise SettingsError("creating the roles' MinIO users needs MinIO's root key in LAKEHOUSE_S3_ACCESS_KEY "
                                "and LAKEHOUSE_S3_SECRET_KEY")
        endpoint = self.s.s3_endpoint
        admin = MinioAdmin(endpoint=endpoint.split("://", 1)[1].rstrip("/"), secure=endpoint.startswith("https://"),
                           credentials=StaticProvider(self.s.s3_access_key, self.s.s3_secret_key))
        made = []
        for role in S3_ROLES:
            access, secret = self.s.s3_identity(role)
            if access == self.s.s3_access_key:
                continue
            name = f"lakehouse-{role}"
            made.append(f"{access} ({name})")
            admin.policy_add(name, policy=s3_policy(self.s, role))
            admin.user_add(access, secret)
            try:
                admin.attach_policy([name], user=access)
            except MinioAdminException as e:  # attached by an earlier `stack up`: the policy was updated above
                if "already" not in str(e).lower():
                    raise StackError(f"MinIO refused to give {access} the policy {name}: {e}") from None
        return made

    # ---- Kafka ----------------------------------------------------------------------------
    def _kafka_config(self, bind: str = "127.0.0.1") -> Path:
        """The broker's configuration: clients' listener on ``bind`` (0.0.0.0 in a container),
        advertised as LAKEHOUSE_KAFKA_BOOTSTRAP_SERVERS' first host; the controller on loopback."""
        cfg = self.root / "kafka" / "server.properties"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        port, cport = self.s.kafka_port, self.s.kafka_controller_port
        listener = self.s.kafka_security_protocol
        host = self.s.kafka_bootstrap_servers.split(",")[0].strip().rsplit(":", 1)[0]
        write_private(cfg, "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{cport}",
            f"listeners={listener}://{bind}:{port},CONTROLLER://127.0.0.1:{cport}",
            f"advertised.listeners={listener}://{host}:{port}",
            "controller.listener.names=CONTROLLER",
            f"inter.broker.listener.name={listener}",
            f"listener.security.protocol.map=CONTROLLER:{'SASL_PLAINTEXT' if self.s.kafka_sasl else 'PLAINTEXT'},"
            f"{listener}:{listener}",
            *self._kafka_security_config(),
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

    def _kafka_security_config(self) -> list[str]:
        """SASL/SCRAM on the clients' listener, ACLs by the StandardAuthorizer (none without SASL).
        The broker authenticates to itself (transaction markers) as the admin, a super user. SCRAM's
        users live in the metadata the controller serves, so the controller listener takes SASL
        PLAIN, with the admin as its one user in this (private) file: the broker's requests to the
        controller come from the admin too, not from an ANONYMOUS super user that any local
        process reaching the controller's port would be."""
        if not self.s.kafka_sasl:
            return []
        if self.s.kafka_security_protocol != "SASL_PLAINTEXT" or not self.s.kafka_sasl_mechanism.startswith("SCRAM-"):
            raise StackError(f"the local stack's broker takes SASL_PLAINTEXT with SCRAM-SHA-512 or SCRAM-SHA-256, "
                             f"not {self.s.kafka_security_protocol} with {self.s.kafka_sasl_mechanism}: fix "
                             "LAKEHOUSE_KAFKA_SECURITY_PROTOCOL / LAKEHOUSE_KAFKA_SASL_MECHANISM")
        mechanism, listener = self.s.kafka_sasl_mechanism, self.s.kafka_security_protocol.lower()
        admin, password = self.s.kafka_identity("admin")
        # a properties file: a backslash in a value escapes the next character
        clients = jaas_config(mechanism, admin, password).replace("\\", "\\\\")
        controller = jaas_config("PLAIN", admin, password, **{f"user_{admin}": password}).replace("\\", "\\\\")
        return [
            f"sasl.enabled.mechanisms={mechanism}",
            f"sasl.mechanism.inter.broker.protocol={mechanism}",
            f"listener.name.{listener}.{mechanism.lower()}.sasl.jaas.config={clients}",
            "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
            "sasl.mechanism.controller.protocol=PLAIN",
            f"listener.name.controller.plain.sasl.jaas.config={controller}",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found=false",
            f"super.users=User:{admin}",
        ]

    @property
    def _kafka_security_marker(self) -> str:
        """What the broker's storage was formatted for: its SCRAM admin is in the metadata log."""
        return (f"{self.s.kafka_sasl_mechanism} admin={self.s.kafka_identity('admin')[0]}"
                if self.s.kafka_sasl else "PLAINTEXT")

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
        self._spawn("kafka", self._kafka_cmd("kafka.Kafka", str(self._prepare_kafka())))

    def serve_kafka(self) -> None:
        """Run the broker in the foreground, as this process (a container's main process: the
        docker-compose ``kafka`` service), listening on every interface; the same configuration,
        SCRAM admin and storage as ``up``'s. ``lakehouse setup kafka`` then adds the roles' users,
        their ACLs and the topics."""
        cmd = self._kafka_cmd("kafka.Kafka", str(self._prepare_kafka(bind="0.0.0.0")))
        os.execv(cmd[0], cmd)

    def _prepare_kafka(self, bind: str = "127.0.0.1") -> Path:
        """Write the broker's configuration and format its storage (once, the SCRAM admin in it)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        cfg = self._kafka_config(bind)
        marker = self.root / "kafka" / "formatted-for"
        if not (self.root / "kafka" / "data" / "meta.properties").exists():
            args = ["format", "-t", new_cluster_id(), "-c", str(cfg)]
            if self.s.kafka_sasl:  # the admin's SCRAM credential in the first metadata: nobody else can add it
                admin, password = self.s.kafka_identity("admin")
                args += ["--add-scram", f"{self.s.kafka_sasl_mechanism}=[name={admin},password={password}]"]
            # the arguments in a file only this user reads (``java @file``: each in double quotes, with
            # backslashes and quotes escaped), never on a command line
            argfile = write_private(self.root / "kafka" / "format.args", "\n".join(
                double_quoted(a) for a in self._kafka_cmd("kafka.tools.StorageTool", *args)[1:]))
            try:
                proc = subprocess.run([self._java(), f"@{argfile}"], capture_output=True, text=True)
            finally:
                argfile.unlink(missing_ok=True)
            if proc.returncode != 0:
                raise StackError(f"formatting Kafka storage failed: {(proc.stdout + proc.stderr).strip()[-300:]}")
            marker.write_text(self._kafka_security_marker + "\n")
        formatted = marker.read_text().strip() if marker.exists() else "PLAINTEXT"
        if formatted != self._kafka_security_marker:
            raise StackError(
                f"the local Kafka's storage ({self.root / 'kafka' / 'data'}) was formatted for {formatted}, the "
                f"settings ask for {self._kafka_security_marker}: set LAKEHOUSE_KAFKA_SECURITY_PROTOCOL and the "
                f"admin identity back, or delete {self.root / 'kafka'} (its topics are lost) and run "
                "`lakehouse stack up` again")
        return cfg

    def _kafka_health(self) -> bool:
        if not port_open("127.0.0.1", self.s.kafka_port):
            return False
        try:
            admin = kafka_admin(self.s, timeout_ms=2000)
        except SettingsError:  # the broker answers and refuses the admin identity: no use waiting
            raise
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

    def ensure_kafka_identities(self) -> None:
        """Each role's SCRAM user (the admin's is formatted in) and its ACLs (``kafka_acls``);
        both are upserts, so a changed password or a new topic name takes effect at the next ``up``."""
        if not self.s.kafka_sasl:
            return
        from kafka.admin import UserScramCredentialUpsertion

        from common.settings import KAFKA_ROLES

        admin_user = self.s.kafka_identity("admin")[0]
        users = {}
        for role in KAFKA_ROLES:
            user, password = self.s.kafka_identity(role)
            if user != admin_user:
                users[user] = password
        admin = kafka_admin(self.s)
        try:
            if users:
                failed = {u: e for u, e in admin.alter_user_scram_credentials(
                    [UserScramCredentialUpsertion(u, self.s.kafka_sasl_mechanism, p) for u, p in users.items()]).items()
                    if e}
                if failed:
                    raise StackError(f"Kafka refused the SCRAM users {failed}")
            result = admin.create_acls(kafka_acls(self.s))
            if result.get("failed"):
                raise StackError(f"Kafka refused {len(result['failed'])} of the roles' ACLs: {result['failed'][0]}")
        finally:
            admin.close()

    # ---- public ---------------------------------------------------------------------------
    def up(self, timeout: float = 90) -> list[ServiceStatus]:
        self._start_minio()
        self._start_kafka()
        wait_until(lambda: self._exited_check("minio") or self._minio_health(), timeout, "MinIO to become healthy")
        wait_until(lambda: self._exited_check("kafka") or self._kafka_health(), timeout, "Kafka to become healthy")
        self.ensure_buckets()
        self.ensure_s3_identities()
        self.ensure_kafka_identities()
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
                          f"bucket{'s' * (len(self.s.buckets) > 1)} {', '.join(self.s.buckets)}, "
                          f"console :{self.s.minio_console_port}"),
        ]
