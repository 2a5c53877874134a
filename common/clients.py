"""Clients of the services the pipeline runs against - Kafka, the S3 endpoint - and the checks
that fail fast, with one line naming the setting, before a Spark job starts. Part of the runtime:
a production ``spark-submit`` uses them; the local stack (``devstack``) does too."""

from __future__ import annotations

import os
import socket

from common.errors import SettingsError, UnreachableError
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


def kafka_admin(settings: Settings, timeout_ms: int = 10000):
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        return KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
                                request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms,
                                client_id="lakehouse-admin")
    except KafkaError:
        raise UnreachableError(f"no Kafka broker answers at {settings.kafka_bootstrap_servers}; start one "
                               "(`lakehouse stack up`) or fix LAKEHOUSE_KAFKA_BOOTSTRAP_SERVERS") from None


def kafka_consumer(settings: Settings, client_id: str, **options):
    """A consumer that joins no group and commits nothing (the pipeline's reads of Kafka outside
    Spark: offsets, the trace's search); ``options`` are kafka-python's."""
    from kafka import KafkaConsumer

    return KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers.split(","), enable_auto_commit=False,
                         client_id=client_id, **options)


def kafka_partitions(settings: Settings, topic: str) -> list[int]:
    """The partition numbers of ``topic``."""
    admin = kafka_admin(settings, timeout_ms=5000)
    try:
        described = admin.describe_topics([topic])
    finally:
        admin.close()
    return sorted(p["partition_index"] for d in described for p in d.get("partitions", []))


def minio_client(settings: Settings, http_client=None):
    from minio import Minio

    endpoint = settings.s3_endpoint
    secure = endpoint.startswith("https://")
    host = endpoint.split("://", 1)[1].rstrip("/")
    return Minio(host, access_key=settings.s3_access_key, secret_key=settings.s3_secret_key,
                 secure=secure, region=settings.s3_region, http_client=http_client)


def check_reachable(settings: Settings, kafka: bool = True) -> None:
    """Fail in seconds, with one line, when the lake's S3 endpoint or Kafka does not answer."""
    if settings.is_s3:
        host_port = settings.s3_endpoint.split("://", 1)[1].rstrip("/")
        host = host_port.rsplit(":", 1)[0] if ":" in host_port else host_port
        if not port_open(host, settings.s3_port, timeout=3):
            raise UnreachableError(f"the S3 endpoint {settings.s3_endpoint} does not answer; start MinIO "
                                   "(`lakehouse stack up`) or fix LAKEHOUSE_S3_ENDPOINT")
        check_s3_access(settings)
    if kafka:
        admin = kafka_admin(settings, timeout_ms=5000)
        admin.close()


# S3 error codes a user can fix, each with the setting to look at (never the secret itself).
_S3_ACCESS_ERRORS = {
    "InvalidAccessKeyId": "{endpoint} does not know the access key in LAKEHOUSE_S3_ACCESS_KEY: fix it",
    "SignatureDoesNotMatch": "{endpoint} rejects LAKEHOUSE_S3_SECRET_KEY for the access key in "
                             "LAKEHOUSE_S3_ACCESS_KEY: fix the secret key",
    "AccessDenied": "the access key in LAKEHOUSE_S3_ACCESS_KEY may not list s3://{bucket}/ at {endpoint}: "
                    "grant it read and write on the bucket, or use another key",
    "NoSuchBucket": "bucket {bucket!r} does not exist at {endpoint}: create it (`lakehouse stack up` does "
                    "for the local stack) or fix LAKEHOUSE_LAKE_ROOT",
}


def check_s3_access(settings: Settings) -> None:
    """One signed request (list the top level of the lake's folder): a wrong key, a wrong secret, a
    missing bucket becomes one line naming the setting, before any Spark job starts."""
    import urllib3
    from minio.error import MinioException, S3Error
    from urllib3.exceptions import HTTPError

    # seconds, not minio's default 5 retries of 300 s: an endpoint that takes connections but never
    # answers is one line too
    quick = urllib3.PoolManager(timeout=urllib3.Timeout(connect=3, read=10), retries=urllib3.Retry(total=1))
    try:
        prefix = settings.lake_root[len("s3a://"):].partition("/")[2].strip("/")
        next(iter(minio_client(settings, quick).list_objects(settings.bucket, prefix=prefix + "/" if prefix else None)),
             None)
    except S3Error as e:
        template = _S3_ACCESS_ERRORS.get(e.code)
        if template is None:
            raise UnreachableError(f"{settings.s3_endpoint} answered {e.code} for bucket "
                                   f"{settings.bucket!r}: {e.message}") from None
        raise SettingsError(template.format(endpoint=settings.s3_endpoint, bucket=settings.bucket)) from None
    except (HTTPError, OSError, MinioException) as e:
        raise UnreachableError(f"the S3 endpoint {settings.s3_endpoint} does not answer S3 requests "
                               f"({type(e).__name__}); fix LAKEHOUSE_S3_ENDPOINT") from None
