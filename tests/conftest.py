"""Shared fixtures: one Spark session per test run, the real local stack, isolated lake roots.

Every test that touches the lake gets its own prefix in the bucket and its own Kafka topics,
so tests never see each other's data and can run against a stack that also holds demo data.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("LAKEHOUSE_ENV_FILE", str(ROOT / "local.env"))

from common.settings import Settings  # noqa: E402

RUN_ID = uuid.uuid4().hex[:8]


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items):
    """A test that needs the stack (its fixtures start it: ``stack``, ``lake``, ...) is marked
    ``stack`` whether or not its module says so: ``make test-unit`` (``-m "not stack"``) then runs
    none of them and never starts the stack."""
    for item in items:
        if "stack" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("stack"):
            item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    # KPIs every 5 s rather than the default 30 s: live tests wait for them
    return Settings.from_env().with_overrides(shuffle_partitions=2, spark_master="local[2]",
                                              kpi_trigger="processingTime=5 seconds")


@pytest.fixture(scope="session")
def stack(base_settings):
    from devstack.stack import Stack

    st = Stack(base_settings)
    st.up()
    return st


@pytest.fixture(scope="session")
def spark(base_settings):
    """Needs no running stack: tests that touch Kafka or MinIO also ask for ``stack`` or ``lake``."""
    from common.spark import get_spark

    session = get_spark(base_settings, app_name="lakehouse-tests")
    yield session
    session.stop()


def isolated_settings(base: Settings, name: str) -> Settings:
    """Settings with their own lake prefix and their own (created) topics."""
    from devstack.stack import Stack

    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if len(slug) > 40:  # cut, with the whole name's hash: two parameters of one test never share a lake
        slug = f"{slug[:31].strip('-')}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    settings = base.with_topic_scope(f"t{RUN_ID}-{slug}", lake_root=f"{base.lake_root.rstrip('/')}/tests/{RUN_ID}/{slug}")
    Stack(settings).ensure_topics()
    return settings


@pytest.fixture
def lake(request, base_settings, stack) -> Settings:
    return isolated_settings(base_settings, request.node.name)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a subprocess needs to see ``settings`` (for CLI / spark-submit tests)."""
    from common.settings import SECRET_FIELDS, env_var

    env = dict(os.environ)
    secrets = {env_var(f) for f in SECRET_FIELDS}  # the subprocess reads them from LAKEHOUSE_ENV_FILE
    for k, v in settings.redacted().items():
        if k not in secrets:
            env[k] = str(v)
    return env


@pytest.fixture(scope="session")
def pipeline_lake(base_settings, stack, spark, tmp_path_factory) -> Settings:
    """A lake the whole pipeline filled once, for the tests that only read it (compute once, assert
    many): the data-quality suites and the dashboard, which share a worker of make test (GX's one
    folder). 300 records per topic with duplicates, late and malformed records, over the last 10
    minutes of event time (2 s apart: every chart has several minutes to draw), customers loaded.
    A test that changes a lake makes its own (``lake``)."""
    from datetime import datetime, timedelta, timezone

    from silver import customers
    from app.runner import run
    from tests.helpers import produce_to

    settings = isolated_settings(base_settings, "pipeline-lake")
    customers.load(spark, settings)
    produce_to(settings, tmp_path_factory.mktemp("pipeline-lake") / "ledger.jsonl", 300, seed=51,
               duplicate_pct=10, late_pct=5, malformed_pct=5, event_spacing=2.0,
               start_time=datetime.now(timezone.utc) - timedelta(minutes=10))
    run(("bronze", "silver", "gold"), settings, "availableNow", spark=spark)
    return settings
