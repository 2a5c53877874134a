"""The JVM pins (common/versions.py) and the Python pins (pyproject.toml) name the same Spark and
Delta releases, and those are the ones installed: the Python and JVM halves must match."""

from __future__ import annotations

import re
from importlib.metadata import version

from common import versions
from tests.conftest import ROOT


def _pin(name: str) -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(rf'"{re.escape(name)}(\[[^\]]*\])?==([^"]+)"', text).group(2)


def test_spark_and_delta_pins_agree_with_each_other_and_what_is_installed():
    assert _pin("pyspark") == versions.SPARK_VERSION == version("pyspark")
    assert _pin("delta-spark") == versions.DELTA_VERSION == version("delta-spark")
    assert any(p.startswith(f"io.delta:delta-spark_{versions.SPARK_MAJOR_MINOR}_{versions.SCALA_BINARY}:"
                            f"{versions.DELTA_VERSION}") for p in versions.SPARK_PACKAGES)
