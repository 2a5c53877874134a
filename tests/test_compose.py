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


def test_services_present():
    assert {"kafka", "minio", "minio-init", "spark-master", "spark-worker", "bronze", "silver", "gold"} <= set(SERVICES)


def test_stage_services_use_only_known_settings_and_they_validate():
    for stage in ("bronze", "silver", "gold"):
        env = _env(stage)
        lakehouse_vars = {k for k in env if k.startswith("LAKEHOUSE_")}
        assert lakehouse_vars <= KNOWN, lakehouse_vars - KNOWN
        # each stage holds its own role's S3 key and no other (MinIO's root key is minio-init's alone)
        assert {k for k in env if "_KEY" in k} == {f"LAKEHOUSE_S3_ACCESS_KEY_{stage.upper()}",
                                                   f"LAKEHOUSE_S3_SECRET_KEY_{stage.upper()}"}
        resolved = {k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", v) for k, v in env.items()}
        s = Settings.from_env(resolved).acting_as(stage)
        assert s.lake_layout == "bucket-per-layer" and s.s3_role_for(stage) == stage
        # addresses point at compose services, on the ports those services listen on
        host, port = s.kafka_bootstrap_servers.split(":")
        assert host == "kafka" and f"{port}:{port}" in SERVICES["kafka"]["ports"]
        assert f"PLAINTEXT://{host}:{port}" in _env("kafka")["KAFKA_ADVERTISED_LISTENERS"]
        assert s.s3_endpoint == f"http://minio:{s.s3_port}" and f"{s.s3_port}:{s.s3_port}" in SERVICES["minio"]["ports"]
        assert SERVICES["minio-init"]["command"] == ["lakehouse", "setup", "s3"]
        init = {k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", v) for k, v in _env("minio-init").items()}
        assert init[f"LAKEHOUSE_S3_ACCESS_KEY_{stage.upper()}"] == resolved[f"LAKEHOUSE_S3_ACCESS_KEY_{stage.upper()}"]
        assert (init["LAKEHOUSE_S3_ACCESS_KEY"], init["LAKEHOUSE_S3_SECRET_KEY"]) == (
            _env("minio")["MINIO_ROOT_USER"].split(":-")[1].rstrip("}"),
            _env("minio")["MINIO_ROOT_PASSWORD"].split(":-")[1].rstrip("}"))
        assert s.topic_partitions == int(_env("kafka")["KAFKA_NUM_PARTITIONS"])
        init = " ".join(SERVICES["kafka-init"]["command"])
        for topic in (*s.source_topics, s.topic_enriched):
            assert topic in init
        cmd = SERVICES[stage]["command"]
        assert cmd[0] == "spark-submit" and cmd[-2:] == ["app/submit.py", stage] and (ROOT / cmd[-2]).exists()
        assert cmd[cmd.index("--master") + 1] == "spark://spark-master:7077"


def test_defaults_match_local_stack_ports():
    d = Settings.from_env({"LAKEHOUSE_S3_ACCESS_KEY": "a", "LAKEHOUSE_S3_SECRET_KEY": "b"})
    assert f"{d.kafka_port}:{d.kafka_port}" in SERVICES["kafka"]["ports"]
    assert f"{d.s3_port}:{d.s3_port}" in SERVICES["minio"]["ports"]
    assert f"{d.minio_console_port}:{d.minio_console_port}" in SERVICES["minio"]["ports"]
