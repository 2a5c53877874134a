"""Clients of the services the pipeline runs against - Kafka, the S3 endpoint - and the checks
that fail fast, with one line naming the setting, before a Spark job starts. Part of the runtime:
a production ``spark-submit`` uses them; the local stack (``devstack``) does too."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading

from common.errors import SettingsError, SetupError, UnreachableError
from common.settings import Settings


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def kafka_config(settings: Settings, role: str) -> dict[str, object]:
    """kafka-python's connection options for a client of ``role`` (``KAFKA_ROLES``): the brokers
    and, with SASL, the role's identity."""
    config: dict[str, object] = {"bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
                                 "security_protocol": settings.kafka_security_protocol}
    identity = settings.kafka_identity(role)
    if identity:
        config.update(sasl_mechanism=settings.kafka_sasl_mechanism, sasl_plain_username=identity[0],
                      sasl_plain_password=identity[1])
    return config


def double_quoted(text: str) -> str:
    """``text`` in double quotes, backslashes and quotes escaped: a JAAS option's value, a
    ``java @file``'s argument."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def jaas_config(mechanism: str, user: str, password: str, **entries: str) -> str:
    """A ``sasl.jaas.config`` value: the login module of ``mechanism`` with ``user`` and ``password``
    (and ``entries``, e.g. a PLAIN server's ``user_<name>=<password>``), each value quoted."""
    module = ("org.apache.kafka.common.security.plain.PlainLoginModule" if mechanism == "PLAIN"
              else "org.apache.kafka.common.security.scram.ScramLoginModule")
    values = {"username": user, "password": password, **entries}
    return f"{module} required {' '.join(f'{k}={double_quoted(v)}' for k, v in values.items())};"


def kafka_jaas(settings: Settings, role: str) -> dict[str, str]:
    """The same for a Kafka client in a JVM (Spark's ``kafka.``-prefixed options, a properties
    file): the password is in ``sasl.jaas.config``, which Kafka logs as [hidden] and Spark redacts
    (its value matches ``spark.redaction.regex``)."""
    config = {"security.protocol": settings.kafka_security_protocol}
    identity = settings.kafka_identity(role)
    if identity:
        config.update({"sasl.mechanism": settings.kafka_sasl_mechanism,
                       "sasl.jaas.config": jaas_config(settings.kafka_sasl_mechanism, *identity)})
    return config


_SASL_WATCH = threading.Lock()


@contextlib.contextmanager
def _sasl_refusals():
    """The broker's refusals of a SASL login while a client connects. kafka-python retries a
    refused login until its bootstrap times out and then says only "Unable to bootstrap": the
    refusal itself is in its log (the connection's, the transport's or the manager's, whichever
    sees it first), caught here even when that log is quiet."""
    seen: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "SaslAuthenticationFailed" in record.getMessage():
                seen.append(record.getMessage())

    logger, handler = logging.getLogger("kafka"), Catch(logging.WARNING)
    with _SASL_WATCH:  # one at a time: each restores the level and propagation it found
        level, propagate = logger.level, logger.propagate
        if not logger.isEnabledFor(logging.WARNING):  # quiet: the refusal reaches only our handler
            logger.setLevel(logging.WARNING)
            logger.propagate = False
        logger.addHandler(handler)
        try:
            yield seen
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


def kafka_admin(settings: Settings, timeout_ms: int = 10000, role: str = "admin"):
    """An admin client of Kafka role ``role``; one line when no broker answers, when it answers
    another protocol, or when it refuses the role's identity."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    with _sasl_refusals() as refusals:
        try:
            return KafkaAdminClient(**kafka_config(settings, role), request_timeout_ms=timeout_ms,
                                    bootstrap_timeout_ms=timeout_ms, client_id=f"lakehouse-{role}")
        except KafkaError:
            pass
    servers, identity = settings.kafka_bootstrap_servers, settings.kafka_identity(role)
    variables = (f"LAKEHOUSE_KAFKA_USER_{role.upper()} / LAKEHOUSE_KAFKA_PASSWORD_{role.upper()} "
                 "(or LAKEHOUSE_KAFKA_USER / LAKEHOUSE_KAFKA_PASSWORD)")
    if refusals:
        raise SettingsError(f"Kafka at {servers} refused the {role} identity {identity[0]!r} "
                            f"({settings.kafka_sasl_mechanism}): fix {variables}")
    host, _, port = servers.split(",")[0].strip().rpartition(":")
    listening = port_open(host, int(port))
    if listening and identity:  # a refusal kafka-python did not log before its timeout
        raise SettingsError(
            f"Kafka at {servers} takes connections but did not accept the {role} identity {identity[0]!r} "
            f"({settings.kafka_security_protocol}, {settings.kafka_sasl_mechanism}) within {timeout_ms / 1000:.0f} s: "
            f"check {variables} and LAKEHOUSE_KAFKA_SECURITY_PROTOCOL")
    if listening:
        raise SettingsError(
            f"Kafka at {servers} takes connections but does not answer a {settings.kafka_security_protocol} client: "
            "fix LAKEHOUSE_KAFKA_SECURITY_PROTOCOL (the local stack's listener: SASL_PLAINTEXT)")
    raise UnreachableError(f"no Kafka broker answers at {servers}; start one "
                           "(`lakehouse stack up`) or fix LAKEHOUSE_KAFKA_BOOTSTRAP_SERVERS")


def kafka_consumer(settings: Settings, client_id: str, role: str = "reader", **options):
    """A consumer that joins no group and commits nothing (the pipeline's reads of Kafka outside
    Spark: offsets, the trace's search); ``options`` are kafka-python's."""
    from kafka import KafkaConsumer

    return KafkaConsumer(**kafka_config(settings, role), enable_auto_commit=False, client_id=client_id, **options)


def kafka_producer(settings: Settings, client_id: str, role: str = "producer", **options):
    """A producer of Kafka role ``role``; ``options`` are kafka-python's."""
    from kafka import KafkaProducer

    return KafkaProducer(**kafka_config(settings, role), client_id=client_id, **options)


def kafka_partitions(settings: Settings, topic: str, role: str = "reader") -> list[int]:
    """The partition numbers of ``topic``."""
    admin = kafka_admin(settings, timeout_ms=5000, role=role)
    try:
        described = admin.describe_topics([topic])
    finally:
        admin.close()
    return sorted(p["partition_index"] for d in described for p in d.get("partitions", []))


def minio_client(settings: Settings, http_client=None, bucket: str | None = None, role: str | None = None,
                 access_key: str = "", secret_key: str = ""):
    """A MinIO (S3) client with the key of S3 role ``role``, or the one this process holds for
    ``bucket`` (``Settings.s3_key_for``), or its first role's (or the key given)."""
    from minio import Minio

    endpoint = settings.s3_endpoint
    secure = endpoint.startswith("https://")
    host = endpoint.split("://", 1)[1].rstrip("/")
    key = settings.s3_identity(role) if role else (settings.s3_key_for(bucket) if bucket else None)
    access, secret = (access_key, secret_key) if access_key else key or settings.s3_identity(settings.roles[0])
    return Minio(host, access_key=access, secret_key=secret, secure=secure, region=settings.s3_region,
                 http_client=http_client)


def check_reachable(settings: Settings, kafka: str | None = "reader") -> None:
    """Fail in seconds, with one line, when the lake's S3 endpoint or Kafka does not answer or
    refuses the identity of Kafka role ``kafka`` (None: Kafka is not checked)."""
    if settings.is_s3:
        host_port = settings.s3_endpoint.split("://", 1)[1].rstrip("/")
        host = host_port.rsplit(":", 1)[0] if ":" in host_port else host_port
        if not port_open(host, settings.s3_port, timeout=3):
            raise UnreachableError(f"the S3 endpoint {settings.s3_endpoint} does not answer; start MinIO "
                                   "(`lakehouse stack up`) or fix LAKEHOUSE_S3_ENDPOINT")
        check_s3_access(settings)
    if kafka:
        admin = kafka_admin(settings, timeout_ms=5000, role=kafka)
        admin.close()


# S3 error codes a user can fix, each with the setting to look at (never the secret itself).
_S3_ACCESS_ERRORS = {
    "InvalidAccessKeyId": "{endpoint} does not know the access key in {access}: fix it",
    "SignatureDoesNotMatch": "{endpoint} rejects {secret} for the access key in {access}: fix the secret key",
    # (MinIO answers AccessDenied for a bucket that does not exist, to any user but its root)
    "AccessDenied": "the access key in {access} (S3 role {role}) may not list s3://{bucket}/ at {endpoint}, or that "
                    "bucket does not exist: grant the key {rights} on it, use another key, or create the bucket "
                    "(`lakehouse stack up` does for the local stack) or fix LAKEHOUSE_LAKE_ROOT",
    "NoSuchBucket": "bucket {bucket!r} does not exist at {endpoint}: create it (`lakehouse stack up` does "
                    "for the local stack) or fix LAKEHOUSE_LAKE_ROOT",
}


def remove_lake(settings: Settings) -> None:
    """Delete every object of the lake under ``settings.lake_root``, in each of its buckets (a
    scratch lake's clean-up); with the admin role's key."""
    from minio.deleteobjects import DeleteObject

    from common.settings import ZONES, s3_location

    client = minio_client(settings, role="admin")
    for root in dict.fromkeys(settings.zone_root(zone) for zone in ZONES):
        bucket, prefix = s3_location(root)
        if not prefix:
            raise SetupError(f"will not delete the whole bucket {bucket}: the lake to remove must be under a prefix")
        objects = (DeleteObject(o.object_name) for o in client.list_objects(bucket, prefix=f"{prefix}/", recursive=True))
        for error in client.remove_objects(bucket, objects):
            raise SetupError(f"could not delete {root}: {error}")


def s3_denied(path: str, settings: Settings | None = None) -> str:
    """The one line for S3 refusing ``path`` to this process (``settings``: its session's): which
    role's key it used there (the variable holding it, never the key)."""
    from common.settings import s3_location
    from common.spark import session_settings

    settings = settings or session_settings()
    if settings is None or not settings.is_s3:
        return f"S3 denied access to {path}"
    role = settings.s3_role_for_bucket(s3_location(path)[0]) or settings.roles[0]
    return (f"S3 denied access to {path} to S3 role {role} (the key in {s3_key_settings(settings, role)[0]}): "
            f"that role may not do this there; run the command that owns that path, or fix the key")


def s3_key_settings(settings: Settings, role: str) -> tuple[str, str]:
    """The variables holding S3 role ``role``'s access and secret key (its own, or the common ones)."""
    suffix = f"_{role.upper()}" if getattr(settings, f"s3_access_key_{role}") else ""
    return f"LAKEHOUSE_S3_ACCESS_KEY{suffix}", f"LAKEHOUSE_S3_SECRET_KEY{suffix}"


def check_s3_access(settings: Settings) -> None:
    """One signed request per bucket the process's S3 roles use (list the top level of the lake's
    folder there, with the key it holds for that bucket): a wrong key, a wrong secret, a key not
    allowed there, a missing bucket becomes one line naming the setting, before any Spark job starts."""
    import urllib3
    from minio.error import MinioException, S3Error
    from urllib3.exceptions import HTTPError

    from common.settings import S3_RIGHTS, ZONES, s3_location

    # seconds, not minio's default 5 retries of 300 s: an endpoint that takes connections but never
    # answers is one line too
    quick = urllib3.PoolManager(timeout=urllib3.Timeout(connect=3, read=10), retries=urllib3.Retry(total=1))
    checked = set()
    for zone in ZONES:
        role, (bucket, prefix) = settings.s3_role_for(zone), s3_location(settings.zone_root(zone))
        if role is None or bucket in checked:
            continue
        checked.add(bucket)
        try:
            next(iter(minio_client(settings, quick, role=role).list_objects(
                bucket, prefix=prefix + "/" if prefix else None)), None)
        except S3Error as e:
            template = _S3_ACCESS_ERRORS.get(e.code)
            if template is None:
                raise UnreachableError(f"{settings.s3_endpoint} answered {e.code} for bucket {bucket!r}: "
                                       f"{e.message}") from None
            access, secret = s3_key_settings(settings, role)
            rights = S3_RIGHTS[role].get(zone, "read") if settings.lake_layout != "single" else "read and write"
            raise SettingsError(template.format(endpoint=settings.s3_endpoint, bucket=bucket, access=access,
                                                secret=secret, role=role, rights=rights.replace("customers", "read"))
                                ) from None
        except (HTTPError, OSError, MinioException) as e:
            raise UnreachableError(f"the S3 endpoint {settings.s3_endpoint} does not answer S3 requests "
                                   f"({type(e).__name__}); fix LAKEHOUSE_S3_ENDPOINT") from None
