"""The JVM class-data archive (``lakehouse setup jvm``): named after the JDK and the jars, used only
by a local JVM the project launches, and mapped by it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from common import spark as S
from tests.conftest import ROOT, settings_env


def test_the_archive_is_named_after_the_jars_and_applies_to_local_jvms_only(base_settings, monkeypatch, tmp_path):
    jar_a, jar_b = tmp_path / "a.jar", tmp_path / "b.jar"
    for jar in (jar_a, jar_b):
        jar.write_bytes(b"PK")
    monkeypatch.setattr(S.jars, "jars", lambda name: [jar_a, jar_b])
    name = S.class_archive()
    assert name.parent == S.project_cache() / "jvm" and name.name.startswith("classes-") and name.suffix == ".jsa"
    assert S.class_archive() == name
    st = jar_b.stat()
    os.utime(jar_b, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert S.class_archive() != name  # another jar (here: rewritten later) is another archive, never the old one

    monkeypatch.setattr(S, "class_archive", lambda: tmp_path / "classes-x.jsa")
    assert S._archive_options(base_settings, None) == ""  # not written yet: nothing to map
    (tmp_path / "classes-x.jsa").write_bytes(b"x")
    assert f"-XX:SharedArchiveFile={tmp_path / 'classes-x.jsa'}" in S._archive_options(base_settings, None)
    assert S._archive_options(base_settings.with_overrides(spark_master="spark://host:7077"), None) == ""
    assert "-XX:ArchiveClassesAtExit=/x.jsa" in S._archive_options(base_settings, S.Path("/x.jsa"))
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "1")  # under spark-submit the JVM runs already
    assert S._archive_options(base_settings, None) == ""


@pytest.mark.stack
def test_a_lakehouse_jvm_maps_the_class_archive(base_settings, stack):
    """make test writes the archive first (`lakehouse setup jvm`); here it is written if missing."""
    from app.jvm import build_class_archive

    archive, _ = build_class_archive(base_settings)
    probe = ("from pyspark import SparkContext\n"
             "from common.spark import get_spark\n"
             "get_spark()\n"
             "print(open(f'/proc/{SparkContext._gateway.proc.pid}/maps').read())\n")
    out = subprocess.run([sys.executable, "-c", probe], env=settings_env(base_settings), cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert str(archive) in out.stdout  # the JVM checked it against its build and classpath and mapped it
