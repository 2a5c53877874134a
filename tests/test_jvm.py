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
    monkeypatch.setattr(S.jars, "spark_home", lambda create=True: tmp_path / "home")
    name = S.class_archive()
    assert name.parent == S.jars.cache_root() / "jvm" and name.name.startswith("classes-") and name.suffix == ".jsa"
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


def test_every_clone_launches_from_one_spark_home_in_the_users_cache(monkeypatch, tmp_path):
    """JDK 17 maps an archive only under the classpath it was written with: two clones' pyspark
    (same jars, their own paths and times) get one Spark home, its jars linked, its scripts runnable."""
    from common import jars

    monkeypatch.setenv("LAKEHOUSE_CACHE_DIR", str(tmp_path / "cache"))
    homes = []
    for clone, mtime in (("a", 1_000_000_000), ("b", 2_000_000_000)):
        pyspark = tmp_path / clone / "pyspark"
        (pyspark / "bin").mkdir(parents=True)
        (pyspark / "jars").mkdir()
        (pyspark / "bin" / "spark-submit").write_text("#!/bin/sh\n")
        (pyspark / "bin" / "spark-submit").chmod(0o755)
        (pyspark / "python" / "lib").mkdir(parents=True)
        (pyspark / "python" / "lib" / "pyspark.zip").write_bytes(b"PK zip")
        for name in ("spark-core.jar", "delta.jar"):
            (pyspark / "jars" / name).write_bytes(b"PK" + name.encode())
            os.utime(pyspark / "jars" / name, (mtime, mtime))
        monkeypatch.setattr(jars, "pyspark_jars_dir", lambda p=pyspark: p / "jars")
        assert jars.spark_home(create=False).exists() == (clone == "b")  # (create=False: its path only)
        homes.append(jars.spark_home())
    home = homes[0]
    assert homes[1] == home and home.parent == tmp_path / "cache" / "spark-home"
    assert sorted(p.name for p in (home / "jars").iterdir()) == ["delta.jar", "spark-core.jar"]
    # Spark puts $SPARK_HOME/python/lib on the PYTHONPATH of Python workers that are not the driver's
    assert (home / "python" / "lib" / "pyspark.zip").read_bytes() == b"PK zip"
    assert (home / "jars" / "delta.jar").stat().st_mtime == 1_000_000_000  # the first clone's, kept
    assert (home / "jars" / "delta.jar").stat().st_ino == (tmp_path / "a" / "pyspark" / "jars" / "delta.jar").stat().st_ino
    assert os.access(home / "bin" / "spark-submit", os.X_OK)
    (tmp_path / "b" / "pyspark" / "jars" / "delta.jar").write_bytes(b"PK another build")
    assert jars.spark_home() != home  # another pyspark build: another home, never a mixed one


def test_every_driver_jvm_gets_the_jit_setting(base_settings, tmp_path, monkeypatch):
    """The JIT setting reaches a driver whether its JVM is launched here (with or without the log4j
    file of ``lakehouse setup jars``) or by spark-submit (spark-defaults.conf)."""
    from pyspark.sql import SparkSession

    for conf_dir in (tmp_path / "none", tmp_path / "conf"):
        monkeypatch.setattr(S, "spark_conf_dir", lambda d=conf_dir: d)
        if conf_dir.name == "conf":
            conf_dir.mkdir()
            (conf_dir / "log4j2.properties").write_text("")
        options = S.configure(SparkSession.builder, base_settings)._options["spark.driver.extraJavaOptions"]
        assert S.DRIVER_JIT in options.split()
    assert S.DRIVER_JIT in S.spark_properties()["spark.driver.extraJavaOptions"].split()


def test_a_cache_entry_in_use_is_never_replaced_and_a_partial_one_is(tmp_path):
    """``common.cache.publish``: an entry another clone published whole stays as it is (a JVM may be
    running from it); one a killed run left without its last file is replaced, never read half."""
    from common.cache import publish

    target = tmp_path / "entry"

    def fill(label):
        def write(folder):
            (folder / "data").write_text(label)
            (folder / "done").write_text("")
        return write

    def complete():
        return (target / "done").exists()

    publish(target, fill("first"), complete)
    views = iter([False, True])  # another clone found no entry, filled its own, then found the first one
    publish(target, fill("second"), lambda: next(views))
    assert (target / "data").read_text() == "first"
    (target / "done").unlink()  # a partial entry
    publish(target, fill("third"), complete)
    assert (target / "data").read_text() == "third" and complete()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]  # nothing left beside it
