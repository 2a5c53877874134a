"""docker-compose.yml cannot run here (no Docker engine); check it agrees with the settings."""

from __future__ import annotations

import dataclasses
import re

import yaml

from common.settings import Settings, env_var
from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
KNOWN = {env_var(f.name) for f in dataclasses.fields(Settings)}


def _env(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in (SERVICES[service].get("environment") or {}).items()}


def _resolved(service: str) -> dict[str, str]:
    """The service's environment with each ``${VAR:-default}`` at its default."""
    return {k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", v) for k, v in _env(service).items()}


def test_services_present():
    assert {"kafka", "minio", "minio-init", "spark-master", "spark-worker", "bronze", "silver", "gold"} <= set(SERVICES)


def test_stage_services_use_only_known_settings_and_they_validate():
    for stage in ("bronze", "silver", "gold"):
        env = _env(stage)
        lakehouse_vars = {k for k in env if k.startswith("LAKEHOUSE_")}
        assert lakehouse_vars <= KNOWN, lakehouse_vars - KNOWN
        # each stage holds its own role's S3 key and Kafka identity, no other (MinIO's root key is
        # minio-init's alone, the Kafka admin's the broker's and kafka-init's)
        assert {k for k in env if "_KEY" in k} == {f"LAKEHOUSE_S3_ACCESS_KEY_{stage.upper()}",
                                                   f"LAKEHOUSE_S3_SECRET_KEY_{stage.upper()}"}
        kafka_role = {"bronze": "BRONZE", "gold": "GOLD"}.get(stage)
        assert {k for k in env if "_USER" in k or "_PASSWORD" in k} == (
            {f"LAKEHOUSE_KAFKA_USER_{kafka_role}", f"LAKEHOUSE_KAFKA_PASSWORD_{kafka_role}"} if kafka_role else set())
        resolved = _resolved(stage)
        s = Settings.from_env(resolved).acting_as(stage)
        assert s.lake_layout == "bucket-per-layer" and s.s3_role_for(stage) == stage
        if kafka_role:  # the identity kafka-init creates
            assert s.kafka_identity(kafka_role.lower()) == Settings.from_env(_resolved("kafka-init")).kafka_identity(
                kafka_role.lower())
        # addresses point at compose services, on the ports those services listen on; the broker is the
        # local stack's (its port, its admin: the one kafka-init uses), advertised as the stages reach it
        host, port = s.kafka_bootstrap_servers.split(":")
        assert host == "kafka" and f"{port}:{port}" in SERVICES["kafka"]["ports"]
        broker = Settings.from_env(_resolved("kafka"))
        assert SERVICES["kafka"]["command"] == ["lakehouse", "stack", "kafka"]
        assert (broker.kafka_bootstrap_servers, broker.kafka_security_protocol) == (
            s.kafka_bootstrap_servers, s.kafka_security_protocol) == ("kafka:9092", "SASL_PLAINTEXT")
        assert broker.kafka_identity("admin") == Settings.from_env(_resolved("kafka-init")).kafka_identity("admin")
        assert s.s3_endpoint == f"http://minio:{s.s3_port}" and f"{s.s3_port}:{s.s3_port}" in SERVICES["minio"]["ports"]
        assert SERVICES["minio-init"]["command"] == ["lakehouse", "setup", "s3"]
        init = _resolved("minio-init")
        assert init[f"LAKEHOUSE_S3_ACCESS_KEY_{stage.upper()}"] == resolved[f"LAKEHOUSE_S3_ACCESS_KEY_{stage.upper()}"]
        assert (init["LAKEHOUSE_S3_ACCESS_KEY"], init["LAKEHOUSE_S3_SECRET_KEY"]) == (
            _env("minio")["MINIO_ROOT_USER"].split(":-")[1].rstrip("}"),
            _env("minio")["MINIO_ROOT_PASSWORD"].split(":-")[1].rstrip("}"))
        assert SERVICES["kafka-init"]["command"] == ["lakehouse", "setup", "kafka"]
        assert Settings.from_env(_resolved("kafka-init")).topic_partitions == s.topic_partitions
        cmd = SERVICES[stage]["command"]
        assert cmd[0] == "spark-submit" and cmd[-2:] == ["app/submit.py", stage] and (ROOT / cmd[-2]).exists()
        assert cmd[cmd.index("--master") + 1] == "spark://spark-master:7077"


def test_defaults_match_local_stack_ports():
    d = Settings.from_env({"LAKEHOUSE_S3_ACCESS_KEY": "a", "LAKEHOUSE_S3_SECRET_KEY": "b"})
    assert f"{d.kafka_port}:{d.kafka_port}" in SERVICES["kafka"]["ports"]
    assert f"{d.s3_port}:{d.s3_port}" in SERVICES["minio"]["ports"]
    assert f"{d.minio_console_port}:{d.minio_console_port}" in SERVICES["minio"]["ports"]
